#!/bin/sh
# A VM with 4 vCPUs and one vhost-user-scsi controller with 4 request queues: one queue per
# vCPU, so that every vCPU submits and completes on its own queue (the Linux guest maps its
# queues to CPUs); the server services each queue on its own Dispatch queue.
#
# Start the server first with at least as many queues; it creates SOCKET only once every LUN
# has answered:
#   vhost-user-scsi --socket /run/vhost-user-scsi/vm1/scsi0.sock --num-queues 4 \
#       --lun iscsi://storage.example/iqn.2026-11.example:storage/1 \
#       --lun iscsi://storage.example/iqn.2026-11.example:storage/2
# then the VM, completing the machine with the extra arguments (boot disk or -kernel, network,
# display, ...):
#   Examples/qemu-multi-queue.sh /run/vhost-user-scsi/vm1/scsi0.sock -cdrom installer.iso
#
# Usage: qemu-multi-queue.sh SOCKET [QEMU ARGUMENT...]
# Environment: QEMU (default qemu-system-x86_64), MEMORY (guest RAM, default 4G), QUEUES
#              (vCPUs and request queues, default 4), ACCEL (default kvm:tcg)
set -eu
socket=${1:?usage: qemu-multi-queue.sh SOCKET [QEMU ARGUMENT...]}
shift
memory=${MEMORY:-4G}
queues=${QUEUES:-4}

# Shared guest RAM as in qemu-one-queue.sh. num_queues must not exceed the server's
# --num-queues (it offers that many through GET_QUEUE_NUM; QEMU 7.2 starts regardless).
# Add ",reconnect-ms=1000" to the chardev to let QEMU reconnect to a restarted server
# (QEMU 9.2 or later; QEMU 8.2 to 9.1 spell it ",reconnect=1", in seconds).
exec "${QEMU:-qemu-system-x86_64}" \
    -machine "q35,accel=${ACCEL:-kvm:tcg}" -smp "$queues" -m "$memory" \
    -object "memory-backend-memfd,id=mem,size=$memory,share=on" -numa node,memdev=mem \
    -chardev "socket,id=vus0,path=$socket" \
    -device "vhost-user-scsi-pci,id=vscsi0,chardev=vus0,num_queues=$queues" \
    "$@"
