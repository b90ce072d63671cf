#!/usr/bin/env bash
# Installs the Debian packages the OCFS2 lab (e2e/) needs on the host.
# (python3, already on the machine, is needed only for lab.sh freeze/thaw.)
# Idempotent: installs only what is missing, and touches nothing otherwise.
set -euo pipefail

# command (or file) -> Debian package that provides it
declare -A PKG=(
  [qemu-system-x86_64]=qemu-system-x86   # the guests (TCG)
  [/bin/busybox]=busybox-static          # lab.sh streams agent replies through busybox awk
  [cpio]=cpio                            # initramfs
  [ip]=iproute2                          # network namespace
  [modprobe]=kmod                        # module dependency resolution for the image
  [depmod]=kmod
  [dpkg-deb]=dpkg
  [gzip]=gzip
  [tgtd]=tgt                             # the --san lab's iSCSI target
  [iscsiadm]=open-iscsi                  # its libraries go into the image (--san initiator)
  [multipathd]=multipath-tools           # its libraries go into the image (--san multipath)
  [dmsetup]=dmsetup                      # its library goes into the image (volumes mapped by hand in tests)
  [sgdisk]=gdisk                         # optional host-side GPT inspection
  [mkfs.ocfs2]=ocfs2-tools               # its libraries (corosync, dlm) go into the image; host controller
  [ldd]=libc-bin
  [timeout]=coreutils
  [fallocate]=util-linux                 # lab-smoke.sh --init controller
  [flock]=util-linux
  [objcopy]=binutils                     # strips debug info from binaries in the image
  [base64]=coreutils
  [/usr/include/seccomp.h]=libseccomp-dev  # runc for the Kubernetes-node lab (scripts/kube-tools.sh --node)
  # the Kubernetes nodes' SSH server (dropbear, for the storage e2e suite's
  # [Disruptive] specs): its libraries go into the node image
  [/usr/lib/x86_64-linux-gnu/libtomcrypt.so.1]=libtomcrypt1
  [/usr/lib/x86_64-linux-gnu/libtommath.so.1]=libtommath1
)
missing=()
for cmd in "${!PKG[@]}"; do
  case "$cmd" in
    /*) [ -e "$cmd" ] && continue ;;
    *) command -v "$cmd" >/dev/null 2>&1 || [ -x "/sbin/$cmd" ] || [ -x "/usr/sbin/$cmd" ] && continue ;;
  esac
  missing+=("${PKG[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "e2e/deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
