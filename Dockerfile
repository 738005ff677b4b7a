# One image for every hostler role; compose.yaml picks the command.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . /src
RUN pip install --no-cache-dir '.[llama]'
ENV HOSTLER_MODELS=/models
ENTRYPOINT ["hostler"]
