#!/bin/sh
# The Procfile's processes in one image: web | worker | release | manage <args> | any command.
set -eu
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
  # prometheus-client's multiprocess files must start empty with the processes that write them.
  rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi
command="${1:-web}"
[ "$#" -gt 0 ] && shift
case "$command" in
  web) exec daphne -e "tcp:port=${PORT:-3000}:interface=0.0.0.0:backlog=1024" flowsite.asgi:application ;;
  worker) exec python manage.py rqworker "$@" ;;
  release) python manage.py migrate --noinput && exec python manage.py check --deploy ;;
  manage) exec python manage.py "$@" ;;
  *) exec "$command" "$@" ;;
esac
