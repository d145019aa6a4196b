# One image for every Flowsite process: `web` (daphne), `worker` (rqworker), `release` (migrate).
# Build: docker build -t flowsite .   Run: see docker-compose.yml and README "Operating it".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLOWSITE_HOME=/data \
    PORT=3000 \
    WORKER_PORT=5566

WORKDIR /app
COPY requirements/base.txt requirements/base.txt
RUN pip install --no-cache-dir -r requirements/base.txt
COPY . .

RUN useradd --system --home-dir /data --create-home flowsite
USER flowsite
EXPOSE 3000 5566
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["web"]
