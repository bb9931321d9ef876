#!/bin/sh
# Least privilege per principal (SCRAM users created with kafka-configs.sh --alter
# --add-config 'SCRAM-SHA-512=[password=…]' --entity-type users --entity-name …).
# Gateways only write; ingest and compute only read their topics (ingest writes the DLQ,
# compute the footprints); each consumer group is its own.
set -eu
acl="kafka-acls.sh --bootstrap-server kafka1.plant.example:9094 --command-config admin.properties --add"
for gw in gw-kiln-1 gw-mill-1; do
  $acl --allow-principal "User:$gw" --operation Write --operation Describe --topic readings --topic batches
done
$acl --allow-principal User:bridge --operation Write --operation Describe --topic readings --topic batches
$acl --allow-principal User:ingest --operation Read --operation Describe --topic readings --topic batches
$acl --allow-principal User:ingest --operation Write --operation Describe --topic dlq
$acl --allow-principal User:ingest --operation Read --group plantprint-ingest
$acl --allow-principal User:compute --operation Read --operation Describe --topic readings --topic batches
$acl --allow-principal User:compute --operation Write --operation Describe --topic footprints
$acl --allow-principal User:compute --operation Read --group plantprint-compute
