// The system libiscsi (Debian: libiscsi-dev), seen by Swift as module CLibISCSI.
// Only the ISCSIInitiator target imports it.
#ifndef CLIBISCSI_SHIM_H
#define CLIBISCSI_SHIM_H

#include <stdint.h>
#include <stddef.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#endif
