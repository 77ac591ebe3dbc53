# The FHIR server image. It expects a MongoDB replica set in FHIR_MONGODB_URI (see docker-compose.yml);
# without one it would try to start the embedded FerretDB, whose binary is not in this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package needs (README.md* because pyproject.toml names it as the long description;
# the wildcard keeps the build working if it is absent).
COPY pyproject.toml README.md* ./
COPY fhir_server ./fhir_server
RUN pip install . && rm -rf /app/build /app/*.egg-info
# The published profiles (StructureDefinitions), served read-only (fhir_server/fhir/profiles.py).
COPY profiles ./profiles
ENV FHIR_PROFILES_DIR=/app/profiles

# Run unprivileged; the server writes nothing to disk when it uses an external MongoDB.
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent fhir
USER fhir

ENV FHIR_HOST=0.0.0.0 \
    FHIR_PORT=8080
EXPOSE 8080

# /ready answers 200 only once the app has connected to MongoDB and can ping it (503 otherwise).
# python:3.11-slim has no curl, so the check uses the interpreter.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/ready', timeout=4).status == 200 else 1)"]

CMD ["fhir-server", "serve", "--host", "0.0.0.0", "--workers", "2"]
