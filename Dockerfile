# labelloop ML backend for Label Studio: `docker build -t labelloop .` then see docs/docker.md.
#
# CPU image by default. For an NVIDIA GPU image, build with a CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t labelloop:cuda .
# and run it with `--gpus all` (or the compose `deploy.resources` block in docker-compose.yml).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# WordNet 3.0 dictionary (Debian wordnet-base): the ImageNet zero-shot prior maps label names through it.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends wordnet-base && rm -rf /var/lib/apt/lists/*

# torch/torchvision first, from the chosen wheel index (the CPU index keeps the image ~1 GB smaller than
# PyPI's default CUDA wheels); `pip install .` then finds them already satisfied.
RUN pip install --index-url "${TORCH_INDEX}" "torch>=2.2,<2.15" "torchvision>=0.17,<0.30"

# Dependencies change less often than the code: install them from setup.py alone first (layer cache).
COPY setup.py README.md ./
RUN for pkg in labelloop backend labelers trainers configs; do mkdir -p $pkg && touch $pkg/__init__.py; done \
    && pip install . \
    && pip uninstall -y labelloop \
    && rm -rf labelloop backend labelers trainers configs build *.egg-info

COPY labelloop ./labelloop
COPY backend ./backend
COPY labelers ./labelers
COPY trainers ./trainers
COPY configs ./configs
RUN pip install --no-deps . && rm -rf build *.egg-info

# Run as an unprivileged user; state and caches live under /data (mount volumes there).
RUN useradd --create-home --uid 10001 --user-group labelloop \
    && mkdir -p /data/models /data/cache \
    && chown -R labelloop:labelloop /data
USER labelloop

# MODEL_DIR holds the SQLite store, the embedding cache and the head weights: keep it on a volume.
# HF_HOME / LABELLOOP_CACHE: where downloaded CLIP weights and sample data go (also under /data).
ENV MODEL_DIR=/data/models \
    LABELLOOP_CACHE=/data/cache/labelloop \
    HF_HOME=/data/cache/huggingface \
    HOST=0.0.0.0 \
    PORT=9090 \
    WORKERS=1 \
    LOG_LEVEL=INFO
VOLUME ["/data/models"]
EXPOSE 9090

# /health, with basic auth when BASIC_AUTH_USER/_PASS are set (every route then needs it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD python -c "\
import os, base64, urllib.request as u; \
r = u.Request('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090')); \
user = os.environ.get('BASIC_AUTH_USER'); \
user and r.add_header('Authorization', 'Basic ' + base64.b64encode(('%s:%s' % (user, os.environ.get('BASIC_AUTH_PASS', ''))).encode()).decode()); \
u.urlopen(r, timeout=4)"

# uvicorn, no preloading: with WORKERS>1 each worker is a fresh *spawned* process that builds its own app and
# loads the embedder itself, so CUDA is never initialised before a fork (upstream's gunicorn --preload bug).
CMD ["labelloop", "serve"]
