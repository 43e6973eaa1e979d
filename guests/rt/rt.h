/* ironvirt guest test kit: shared runtime interface.
 *
 * Everything here runs in ring 0 of a tiny freestanding guest. On our development machines
 * ring-0 code is interpreted by KVM's instruction emulator (see
 * /work/shared/KVM-ON-OUR-MACHINES.md), so the runtime does as little work as it can and uses
 * only general-purpose instructions (no SSE/x87, no popcnt, no cmpxchg16b, no int3).
 */
#ifndef IRONVIRT_KIT_RT_H
#define IRONVIRT_KIT_RT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int64_t i64;

#define KIT "IRONVIRT-KIT"
#define MAX_CPUS 64       /* AP stacks are reserved for this many CPUs (rt/link.ld) */
#define MAX_MEMMAP 128    /* E820 table size of boot_params (Linux boot protocol) */
#define CMDLINE_MAX 4096  /* bytes kept, NUL included; bzImage header says cmdline_size 4095 */

/* ---- port and MMIO access (each one is a VM exit) ---- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* Exact-size MMIO accesses: inline asm so the compiler can neither merge nor split them. */
static inline u8 mmio_read8(u64 a) { u8 v; __asm__ volatile("movb (%1), %0" : "=q"(v) : "r"(a) : "memory"); return v; }
static inline u16 mmio_read16(u64 a) { u16 v; __asm__ volatile("movw (%1), %0" : "=r"(v) : "r"(a) : "memory"); return v; }
static inline u32 mmio_read32(u64 a) { u32 v; __asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(a) : "memory"); return v; }
static inline u64 mmio_read64(u64 a) { u64 v; __asm__ volatile("movq (%1), %0" : "=r"(v) : "r"(a) : "memory"); return v; }
static inline void mmio_write8(u64 a, u8 v) { __asm__ volatile("movb %0, (%1)" : : "q"(v), "r"(a) : "memory"); }
static inline void mmio_write16(u64 a, u16 v) { __asm__ volatile("movw %0, (%1)" : : "r"(v), "r"(a) : "memory"); }
static inline void mmio_write32(u64 a, u32 v) { __asm__ volatile("movl %0, (%1)" : : "r"(v), "r"(a) : "memory"); }
static inline void mmio_write64(u64 a, u64 v) { __asm__ volatile("movq %0, (%1)" : : "r"(v), "r"(a) : "memory"); }

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
/* Initial APIC id of the running CPU: CPUID leaf 1, EBX[31:24] (Intel SDM vol. 2A, CPUID). */
static inline u32 cpu_apic_id(void)
{
    u32 a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    return b >> 24;
}

/* Atomics: only lock xadd / xchg / 8-byte lock cmpxchg, which KVM's emulator implements. */
static inline u32 atomic_fetch_add32(volatile u32 *p, u32 v)
{
    __asm__ volatile("lock xaddl %0, %1" : "+r"(v), "+m"(*p) : : "memory");
    return v;
}
static inline u32 atomic_xchg32(volatile u32 *p, u32 v)
{
    __asm__ volatile("xchgl %0, %1" : "+r"(v), "+m"(*p) : : "memory");
    return v;
}
static inline u32 atomic_load32(const volatile u32 *p) { return *p; }

__attribute__((noreturn)) void halt_forever(void);

/* ---- boot information, normalised from either boot protocol ---- */
struct memmap_entry {
    u64 start;
    u64 size;
    u32 type; /* E820 / hvm_memmap_table_entry types: 1 RAM, 2 reserved, 3 ACPI, 4 NVS, 5 bad */
};

struct bootinfo {
    const char *protocol; /* "pvh" or "linux" */
    const char *cmdline;  /* never NULL; "" when the loader gave none */
    u32 memmap_entries;
    struct memmap_entry memmap[MAX_MEMMAP];
    u64 rsdp; /* 0 when no RSDP was found */
};

/* Provided by each guest. */
void kmain(const struct bootinfo *bi);
/* Provided by the smp guest; the runtime's weak default just halts. */
void ap_main(void);

extern const struct bootinfo *boot_info;

/* ---- serial console (COM1 16550 at 0x3f8) and formatted output ---- */
void serial_init(void);
void serial_write(const char *s, size_t n); /* takes the console lock */
int serial_getc(void);                      /* -1 when nothing is waiting */
int kvsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int ksnprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Formats into a line buffer first, so concurrent CPUs never interleave inside a call. */
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- small libc subset (gcc may also emit calls to these) ---- */
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);

/* Command-line helpers: "key=value" words separated by spaces. */
const char *cmdline_value(const char *key, size_t *len);     /* NULL if absent */
u64 cmdline_u64(const char *key, u64 fallback);
int cmdline_is(const char *key, const char *value);

/* ---- ACPI (ACPI 6.5 chapter 5) ---- */
struct gas { /* Generic Address Structure, ACPI 6.5 section 5.2.3.2 */
    u8 space;  /* 0 system memory, 1 system I/O */
    u8 bit_width;
    u8 bit_offset;
    u8 access_size;
    u64 address;
};
#define GAS_SPACE_MEMORY 0
#define GAS_SPACE_IO 1

struct acpi_info {
    u64 rsdp, rsdt, xsdt, fadt, madt, dsdt;
    u64 lapic_addr;     /* MADT local interrupt controller address */
    u32 cpus_enabled;   /* enabled Local APIC / x2APIC entries */
    u32 apic_ids[MAX_CPUS];
    u32 pm1a_cnt, pm1b_cnt; /* I/O ports, 0 when absent */
    u32 pm1a_evt;           /* PM1a_EVT_BLK: status at +0, enable at +pm1_evt_len/2 (4.8.3.1) */
    u32 pm1_evt_len;
    u32 pm_tmr;             /* PM_TMR_BLK, 3.579545 MHz, 24 (or 32) bits (4.8.3.3) */
    u32 sci_irq;            /* FADT SCI_INT: ISA IRQ of the SCI */
    u64 ioapic_addr;        /* first I/O APIC of the MADT, 0 when none */
    u32 ioapic_gsi_base;
    u32 isa_gsi[16];        /* ISA IRQ -> GSI, from the MADT interrupt source overrides */
    u16 isa_flags[16];      /* their MPS INTI flags (5.2.12.5 table 5.26), 0 = bus default */
    int hw_reduced;
    struct gas sleep_ctl;   /* hardware-reduced sleep control register */
    int reset_supported;
    struct gas reset_reg;
    u8 reset_value;
    int s5_found;
    u8 slp_typ_s5;
};
extern struct acpi_info acpi;

u64 acpi_find_rsdp(void);           /* classic scan of 0xe0000..0xfffff */
void acpi_init(u64 rsdp);          /* fills `acpi`; tolerant of missing tables */
u64 acpi_find_table(const char sig[4]);
__attribute__((noreturn)) void acpi_poweroff(void);
__attribute__((noreturn)) void acpi_reset(int use_kbd);

/* ---- interrupts (rt/intr.c, rt/irq.S): IDT gates, local APIC, I/O APIC, 8259 PIC ----
 * Vectors 32..255 go through one stub each to a C handler, called with interrupts off on the
 * interrupted stack; unhandled vectors are acknowledged (LAPIC EOI) and reported. */
#define LAPIC_DEFAULT_BASE 0xfee00000ull
#define IOAPIC_DEFAULT_BASE 0xfec00000ull
#define SPURIOUS_VECTOR 0xff
/* MPS INTI flags (ACPI 6.5 5.2.12.5 table 5.26), as in acpi.isa_flags. */
#define INTI_POLARITY_MASK 0x3
#define INTI_POLARITY_HIGH 0x1
#define INTI_POLARITY_LOW 0x3
#define INTI_TRIGGER_MASK 0xc
#define INTI_TRIGGER_EDGE 0x4
#define INTI_TRIGGER_LEVEL 0xc
/* Routing options for ioapic_route. */
#define IRQ_LEVEL 0x1
#define IRQ_ACTIVE_LOW 0x2

typedef void (*irq_handler_t)(u32 vector);
void idt_set_gate(u32 vector, u64 handler);  /* 64-bit interrupt gate, kernel CS */
void irq_init(void);        /* installs the stubs for vectors 32..255; call once on the BSP */
void irq_set_handler(u32 vector, irq_handler_t h);
u64 lapic_base(void);       /* from the MADT, else 0xfee00000 */
u32 lapic_read(u32 reg);
void lapic_write(u32 reg, u32 value);
void lapic_enable(void);    /* TPR 0, software enable with SPURIOUS_VECTOR */
void lapic_eoi(void);
/* Programs the I/O APIC pin of `gsi`: fixed delivery, physical destination `apic_id`,
 * unmasked; flags IRQ_LEVEL / IRQ_ACTIVE_LOW. Returns -1 when no I/O APIC has that GSI. */
int ioapic_route(u32 gsi, u8 vector, u32 flags, u8 apic_id);
void ioapic_mask(u32 gsi);
/* The routing of ISA IRQ `irq` (MADT overrides, else `bus_default` IRQ_* flags): its GSI. */
u32 isa_irq_gsi(u32 irq, u32 bus_default, u32 *flags);
void pic_disable(void);     /* remaps the 8259s to vectors 0x20..0x2f and masks every line */
static inline void irq_enable(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void irq_disable(void) { __asm__ volatile("cli" ::: "memory"); }

/* ---- CMOS / RTC (MC146818) ---- */
u8 cmos_read(u8 index);
void cmos_write(u8 index, u8 value);
/* Waits until the RTC seconds register has changed `n` times (bounded when no RTC exists). */
void rtc_wait_seconds(u32 n);

/* ---- pvpanic and the kit's start/done protocol ---- */
__attribute__((noreturn)) void guest_panic(const char *why);
void kit_start(const char *name);
__attribute__((noreturn)) void kit_done(const char *name); /* prints done, ACPI power-off */

#endif
