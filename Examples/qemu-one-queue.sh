#!/bin/sh
# A VM with one vhost-user-scsi controller and one request queue: the smallest command line.
#
# Start the server first; it creates SOCKET only once every LUN has answered:
#   vhost-user-scsi --socket /run/vhost-user-scsi/vm1/scsi0.sock \
#       --lun iscsi://storage.example/iqn.2026-11.example:storage/1
# then the VM, completing the machine with the extra arguments (boot disk or -kernel, network,
# display, ...):
#   Examples/qemu-one-queue.sh /run/vhost-user-scsi/vm1/scsi0.sock -cdrom installer.iso
#
# Usage: qemu-one-queue.sh SOCKET [QEMU ARGUMENT...]
# Environment: QEMU (default qemu-system-x86_64), MEMORY (guest RAM, default 2G),
#              ACCEL (default kvm:tcg: KVM when the host has it, else emulation)
set -eu
socket=${1:?usage: qemu-one-queue.sh SOCKET [QEMU ARGUMENT...]}
shift
memory=${MEMORY:-2G}

# Guest RAM must be memory the server can map: a memfd shared with it (share=on), used as the
# RAM of the machine's only NUMA node. Without share=on the server would see a private copy.
# The chardev connects to the server's socket; vhost-user-scsi-pci is the guest's controller,
# here with one request queue (num_queues; at most the server's --num-queues, default 4).
exec "${QEMU:-qemu-system-x86_64}" \
    -machine "q35,accel=${ACCEL:-kvm:tcg}" -smp 1 -m "$memory" \
    -object "memory-backend-memfd,id=mem,size=$memory,share=on" -numa node,memdev=mem \
    -chardev "socket,id=vus0,path=$socket" \
    -device vhost-user-scsi-pci,id=vscsi0,chardev=vus0,num_queues=1 \
    "$@"
