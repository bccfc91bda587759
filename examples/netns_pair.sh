#!/usr/bin/env bash
# Dos "máquinas" en una: dos espacios de nombres de red unidos por un par veth.
#
#   examples/netns_pair.sh up      crea sockecho-srv (10.200.0.1) y sockecho-cli (10.200.0.2)
#   examples/netns_pair.sh down    los borra (y con ellos el par veth)
#
# Hace falta ser root. Nada sale de esta máquina: las direcciones 10.200.0.0/24 existen
# solo dentro de esos dos espacios de nombres (docs/lab.es.md, ejercicio 4).
set -euo pipefail
SERVER=sockecho-srv
CLIENT=sockecho-cli

case "${1:-}" in
  up)
    ip netns add "$SERVER"
    ip netns add "$CLIENT"
    ip link add veth-srv type veth peer name veth-cli
    ip link set veth-srv netns "$SERVER"
    ip link set veth-cli netns "$CLIENT"
    ip -n "$SERVER" addr add 10.200.0.1/24 dev veth-srv
    ip -n "$CLIENT" addr add 10.200.0.2/24 dev veth-cli
    for ns in "$SERVER" "$CLIENT"; do
      ip -n "$ns" link set lo up
    done
    ip -n "$SERVER" link set veth-srv up
    ip -n "$CLIENT" link set veth-cli up
    echo "$SERVER: 10.200.0.1  <-- veth -->  $CLIENT: 10.200.0.2"
    ;;
  down)
    ip netns del "$SERVER" 2>/dev/null || true
    ip netns del "$CLIENT" 2>/dev/null || true
    echo "borrados $SERVER y $CLIENT"
    ;;
  *)
    echo "uso: $0 up|down" >&2
    exit 2
    ;;
esac
