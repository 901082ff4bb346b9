"""Learning side of s2loop: the spiking Q-network in torch, training, fine-tuning, export."""
