# shellcheck shell=sh
# Scenario 2 (guest side): mutual CHAP with CRC32C header and data digests.
# A wrong secret is refused; the right one logs in and carries I/O; the
# session really negotiated CRC32C digests.
# Env from run.sh: PORT1 TARGET SIZE CHAP_USER CHAP_SECRET CHAP_MUTUAL_USER CHAP_MUTUAL_SECRET
iscsid_start CRC32C
step "iscsiadm -m discovery -t sendtargets -p $VTGT:$PORT1"
$ISCSIADM -m discovery -t sendtargets -p "$VTGT:$PORT1"
node() { $ISCSIADM -m node -T "$TARGET" -p "$VTGT:$PORT1" "$@"; }
set_auth() {
    node -o update -n node.session.auth.authmethod -v CHAP
    node -o update -n node.session.auth.username -v "$CHAP_USER"
    node -o update -n node.session.auth.password -v "$1"
    node -o update -n node.session.auth.username_in -v "$CHAP_MUTUAL_USER"
    node -o update -n node.session.auth.password_in -v "$2"
}
step "login with a wrong secret must fail"
set_auth "wrong-secret-0000" "$CHAP_MUTUAL_SECRET"
node -o update -n node.session.initial_login_retry_max -v 1
if node --login; then
    fail "login with a wrong CHAP secret succeeded"
fi
[ -z "$(iscsi_disks "$TARGET")" ] || fail "a disk appeared after a refused login"
echo "refused, as it should be"
step "login with a wrong mutual (target) secret must fail"
set_auth "$CHAP_SECRET" "wrong-target-secret-0"
if node --login; then
    fail "login succeeded although the target proved the wrong mutual secret"
fi
echo "refused, as it should be"
step "login with the right secrets (mutual CHAP, CRC32C digests)"
set_auth "$CHAP_SECRET" "$CHAP_MUTUAL_SECRET"
node --login
disk=$(wait_iscsi_disks "$TARGET" 1)
$ISCSIADM -m session -P 2 >/tmp/sess
grep -E 'HeaderDigest|DataDigest' /tmp/sess
grep -q 'HeaderDigest: CRC32C' /tmp/sess || fail "HeaderDigest is not CRC32C"
grep -q 'DataDigest: CRC32C' /tmp/sess || fail "DataDigest is not CRC32C"
expect_size "$disk" "$SIZE"
fs_roundtrip "$disk"
node --logout
