#!/bin/sh
# Makes the HA example's certificates: one self-signed pair per agent (weir cert), in
# examples/ha/certs. Each node.toml names its own pair and pins the others' certificates.
# On real boxes each agent keeps only its own key, and gets the others' .crt files.
set -e
here=$(dirname "$0")
weir=${WEIR:-weir}
for name in a b w; do
    if [ ! -f "$here/certs/$name.crt" ]; then
        "$weir" cert "$name" --out "$here/certs"
    fi
done
