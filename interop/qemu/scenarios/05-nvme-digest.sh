# shellcheck shell=sh
# Scenario 5 (guest side): NVMe/TCP with header and data digests: the
# basic scenario with nvme connect --hdr-digest --data-digest.
# Env from run.sh: NPORT NQN SIZE
# (A host that asks for digests fails to connect unless the target's ICResp
# enables them, so a working connection shows they were negotiated.)
# shellcheck disable=SC2034 # read by 04-nvme-basic.sh
NVME_CONNECT_ARGS="--hdr-digest --data-digest"
# shellcheck source=04-nvme-basic.sh
. /lib/vtgt/04-nvme-basic.sh
