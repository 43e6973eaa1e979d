/* ironvirt guest test kit: AP trampoline installation (see rt/ap.S). */
#include "rt.h"
#include "ap.h"

extern const char ap_tramp_start[], ap_tramp_pm32[], ap_tramp_data[], ap_tramp_end[];
extern const char gdt[];
extern const struct {
    u16 limit;
    u64 base;
} __attribute__((packed)) gdt_desc;
extern char pml4[];
extern void ap_entry64(void);

struct tramp_data {
    u16 gdt_limit;
    u32 gdt_base;
    u32 far32_off;
    u16 far32_sel;
    u32 cr3;
    u32 far64_off;
    u16 far64_sel;
} __attribute__((packed));

void ap_trampoline_install(u64 dest)
{
    u64 size = (u64)(ap_tramp_end - ap_tramp_start);
    memcpy((void *)dest, ap_tramp_start, size);
    struct tramp_data *d = (struct tramp_data *)(dest + (u64)(ap_tramp_data - ap_tramp_start));
    d->gdt_limit = gdt_desc.limit;
    d->gdt_base = (u32)gdt_desc.base;
    d->far32_off = (u32)(dest + (u64)(ap_tramp_pm32 - ap_tramp_start));
    d->far32_sel = 0x18;
    d->cr3 = (u32)(u64)pml4;
    d->far64_off = (u32)(u64)ap_entry64;
    d->far64_sel = 0x08;
}

u64 ap_trampoline_size(void) { return (u64)(ap_tramp_end - ap_tramp_start); }
