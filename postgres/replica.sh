#!/bin/bash
# Entry point of compose's `postgres-replica` (image postgres:15): a streaming hot standby of the
# `postgres` container. An empty volume is filled first with a base backup of the primary
# (pg_basebackup -R: standby.signal + primary_conninfo; slot compose_replica, so the primary keeps
# the WAL a stopped standby has not received yet); then the image's own entry point starts the
# server, as a hot standby. The same steps as `make up`'s standby (launcher/standby.py).
set -euo pipefail

PRIMARY_HOST="${PRIMARY_HOST:-postgres}"
SLOT="${REPLICA_SLOT:-compose_replica}"
export PGPASSWORD="$POSTGRES_PASSWORD"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  # A slot left by an earlier replica volume (removed since) would make -C fail: drop it if unused.
  until psql -h "$PRIMARY_HOST" -U "$POSTGRES_USER" -d postgres -Atqc \
      "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$SLOT' AND NOT active"; do
    echo "postgres-replica: waiting for $PRIMARY_HOST" >&2
    sleep 1
  done
  gosu postgres pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U "$POSTGRES_USER" -D "$PGDATA" \
    -R -X stream -C -S "$SLOT" --checkpoint=fast --no-password
  # Name the standby on the primary (pg_stat_replication) and keep the password explicit.
  echo "primary_conninfo = 'host=$PRIMARY_HOST port=5432 user=$POSTGRES_USER password=$POSTGRES_PASSWORD application_name=postgres-replica'" \
    >> "$PGDATA/postgresql.auto.conf"
fi

exec docker-entrypoint.sh "$@"
