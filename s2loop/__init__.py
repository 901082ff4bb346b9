"""s2loop: closed-loop control with quantized spiking Q-networks on SpiNNaker2."""

__version__ = "0.1.0"
