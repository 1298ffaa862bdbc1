# The HuggingFace Space image (README front matter: sdk: docker). llama-cpp-python compiles here,
# once, while the image builds, instead of while a Gradio-SDK Space starts.
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

# Spaces run the container as uid 1000.
RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False
WORKDIR /home/user/app

COPY --chown=user requirements.txt .
# The CPU build of torch (the router's heads), not the CUDA one: a CPU Space has no GPU.
RUN pip install --no-cache-dir --user torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir --user -r requirements.txt

COPY --chown=user . .
EXPOSE 7860
CMD ["python", "launch.py", "--no-browser"]
