# inferq: one image for migrations, workers and the CLI (`docker run IMAGE status JOB`).
#
#   docker build -t inferq:cpu .                                   # CPU build of torch (the default)
#   docker build -t inferq:gpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # a CUDA build of torch
#
# docker-compose.yml builds both (the GPU one for its `gpu` profile). The CUDA wheels bring their own CUDA
# libraries; the host needs only an NVIDIA driver and the NVIDIA Container Toolkit.
FROM python:3.11-slim

#: The torch to install, and the index it comes from. torch goes in first and alone, so that the project's
#: `torch>=2.3,<3` range is already met and pip never swaps in another (multi-GB CUDA) build.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HF_HOME=/home/inferq/.cache/huggingface

# A non-root user; its Hugging Face cache exists (and is its own) before a volume is mounted there, so a fresh
# named volume takes that ownership.
RUN groupadd --gid 1000 inferq \
    && useradd --uid 1000 --gid inferq --create-home --shell /usr/sbin/nologin inferq \
    && mkdir -p "$HF_HOME" \
    && chown -R inferq:inferq /home/inferq

# torch first: the largest layer, rebuilt only when TORCH_SPEC or TORCH_INDEX_URL changes.
RUN pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC" \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Then the project with the worker extras (transformers, tokenizers …); the installed torch satisfies its range.
WORKDIR /src
COPY . .
RUN pip install ".[worker,server]" \
    && python -c "import torch; print('torch after project install:', torch.__version__)" \
    && inferq --help >/dev/null

USER inferq
WORKDIR /home/inferq

ENTRYPOINT ["inferq"]
CMD ["--help"]
