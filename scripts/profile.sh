# Sourced by the scripts that build and run quorumkv: which cargo profile they use.
#
#   QUORUMKV_PROFILE=release   the optimised build users deploy (the Docker image and the
#                              benchmark default to it)
#   QUORUMKV_PROFILE=dev       the profile the tests use (scripts/test.sh sets it for all its
#                              steps, so CI compiles RocksDB's C++ once)
#
# A script sets `default_profile` before sourcing this; afterwards `profile` is the profile,
# `profile_dir` its directory under target/, and `profile_flags` the cargo flags that build it.
profile="${QUORUMKV_PROFILE:-${default_profile:-dev}}"
case "$profile" in
    release) profile_dir=release profile_flags=(--release) ;;
    dev) profile_dir=debug profile_flags=() ;;
    *)
        echo "QUORUMKV_PROFILE must be release or dev, not '$profile'" >&2
        exit 2
        ;;
esac
