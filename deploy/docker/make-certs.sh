#!/bin/sh
# Certificates for Dask's TLS (compose.tls.yaml, the Kubernetes and SLURM TLS set-ups):
# a private CA, and a certificate and key for each of scheduler, worker and client, signed by it.
#
#   deploy/docker/make-certs.sh [DIR]       # default DIR: this script's folder
#
# writes DIR/certs/{ca.pem, scheduler.pem, scheduler-key.pem, worker.pem, worker-key.pem,
# client.pem, client-key.pem} (the folder the containers mount read-only) and DIR/ca/ca-key.pem
# (the CA's key: keep it off the cluster; it signs new certificates). Keys are mode 600.
#
# Dask checks that a peer's certificate was signed by the CA (both ways: a client without a
# certificate from this CA cannot connect) and does not check host names, so one certificate
# per role is enough for any number of machines. Anyone holding a key from certs/ can run code
# on the cluster: hand out client.pem/client-key.pem only to those who may submit jobs.
# Needs openssl. Set DAYS (default 365) for the validity.
set -eu

dir=${1:-$(cd "$(dirname "$0")" && pwd)}
days=${DAYS:-365}
certs="$dir/certs"
ca="$dir/ca"

if [ -e "$certs/ca.pem" ]; then
    echo "error: $certs/ca.pem exists; remove $certs and $ca to make new certificates" >&2
    exit 1
fi
mkdir -p "$certs" "$ca"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days "$days" \
    -subj "/CN=dtrain Dask CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$ca/ca-key.pem" -out "$certs/ca.pem" 2>/dev/null

for role in scheduler worker client; do
    # Every Dask process is both a server and a client of the others: both usages.
    printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectAltName=DNS:$role,DNS:localhost,IP:127.0.0.1" > "$tmp/$role.ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -subj "/CN=dtrain-$role" \
        -keyout "$certs/$role-key.pem" -out "$tmp/$role.csr" 2>/dev/null
    openssl x509 -req -sha256 -days "$days" -in "$tmp/$role.csr" \
        -CA "$certs/ca.pem" -CAkey "$ca/ca-key.pem" -CAcreateserial -CAserial "$ca/ca.srl" \
        -extfile "$tmp/$role.ext" -out "$certs/$role.pem" 2>/dev/null
done
chmod 644 "$certs/ca.pem" "$certs/scheduler.pem" "$certs/worker.pem" "$certs/client.pem"
openssl verify -CAfile "$certs/ca.pem" "$certs/scheduler.pem" "$certs/worker.pem" "$certs/client.pem" >/dev/null
echo "$certs: ca.pem, scheduler, worker and client certificates and keys (CA key in $ca)"
