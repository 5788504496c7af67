# Scenario 5 (guest side): NVMe/TCP with header and data digests: the
# basic scenario with nvme connect --hdr-digest --data-digest.
# Env from run.sh: NPORT NQN SIZE
NVME_CONNECT_ARGS="--hdr-digest --data-digest"
. /lib/vtgt/04-nvme-basic.sh
