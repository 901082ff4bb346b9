# The serving image: hw + service + clients, no torch.
#
# The install steps are the Makefile's base install (`make install`, the one
# `make demo` uses) with VENV=/opt/venv; tests/test_compose.py checks that the
# two stay the same, so `make test` covers the image's install.
#
#   docker build -t s2loop .
#   docker run --rm -p 127.0.0.1:8000:8000 s2loop            # s2loop serve (emulator)
#   docker build --build-arg SPINNAKER2_SDK="spinnaker2 @ git+https://gitlab.com/spinnaker2/py-spinnaker2.git" -t s2loop:board .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VENV=/opt/venv
ENV PATH=$VENV/bin:$PATH \
    NUMBA_CACHE_DIR=/tmp/numba-cache

WORKDIR /app
COPY . .

# == make install (Makefile: $(VENV)/bin/python, then $(VENV)/.base-installed) ==
RUN python3 -m venv $VENV && $VENV/bin/python -m pip install --upgrade pip
RUN $VENV/bin/python -m pip install -e ./client
RUN $VENV/bin/python -m pip install -e .

# Optional: the board SDK (not on PyPI) for S2LOOP_BACKEND=spinnaker2; empty = emulator only.
ARG SPINNAKER2_SDK=""
RUN if [ -n "$SPINNAKER2_SDK" ]; then \
      apt-get update && apt-get install -y --no-install-recommends git \
      && rm -rf /var/lib/apt/lists/* \
      && $VENV/bin/python -m pip install "$SPINNAKER2_SDK"; \
    fi

# run unprivileged; /results is where the client services write (a named volume)
RUN useradd --create-home --uid 10001 s2loop \
    && mkdir -p /results && chown s2loop:s2loop /results
USER s2loop

ENV S2LOOP_HOST=0.0.0.0 \
    S2LOOP_PORT=8000 \
    S2LOOP_MODELS=/app/models
EXPOSE 8000
CMD ["s2loop", "serve"]
