/* ironvirt guest test kit: AP start-up helpers. */
#ifndef IRONVIRT_KIT_AP_H
#define IRONVIRT_KIT_AP_H
#include "rt.h"

/* Copies the real-mode trampoline to `dest` (page aligned, below 1 MiB) and fills in the GDT,
 * CR3 and entry addresses it needs. A SIPI with vector dest >> 12 then starts an AP there. */
void ap_trampoline_install(u64 dest);
u64 ap_trampoline_size(void);
#endif
