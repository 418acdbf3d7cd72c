# digitserve: the digits classifier behind a REST API.
# Build: docker build -t digitserve .   Run: docker run -p 8000:8000 digitserve
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DIGITSERVE_HOST=0.0.0.0 \
    DIGITSERVE_PORT=8000 \
    DIGITSERVE_MODEL_PATH=/app/model/classifier.pickle

WORKDIR /app

# Dependencies in their own layer: they change far less often than the code.
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --no-deps -r requirements/runtime.txt

COPY pyproject.toml README.md ./
COPY src/ src/
COPY model/ model/
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --no-create-home digitserve

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]

CMD ["digitserve", "serve"]
