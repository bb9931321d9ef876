#!/bin/sh
# The edge agent's OPC UA application instance certificate (Basic256Sha256,
# SignAndEncrypt): self-signed or from the plant CA, with the application URI in the
# SAN as OPC UA requires. Trust it on the PLC/MES server (its "trusted" folder), and
# put the server's certificate in the edge's trust list. Keys stay on the gateway, 0600.
set -eu
gw=${1:?gateway id}
openssl req -x509 -newkey rsa:3072 -sha256 -days 730 -nodes \
  -keyout "$gw-opcua.key.pem" -out "$gw-opcua.cert.pem" \
  -subj "/CN=$gw plantprint edge/O=plant" \
  -addext "subjectAltName=URI:urn:plantprint:edge:$gw,DNS:$gw" \
  -addext "keyUsage=digitalSignature,nonRepudiation,keyEncipherment,dataEncipherment" \
  -addext "extendedKeyUsage=clientAuth,serverAuth"
chmod 0600 "$gw-opcua.key.pem"
openssl x509 -in "$gw-opcua.cert.pem" -outform der -out "$gw-opcua.cert.der"
