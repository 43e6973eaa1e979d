/* ironvirt guest test kit: COM1 console and printf.
 * 16550 register layout: PC16550D data sheet (National Semiconductor), table "Register Summary". */
#include "rt.h"

#define COM1 0x3f8
#define UART_THR 0 /* transmit holding (write, DLAB=0) */
#define UART_RBR 0 /* receive buffer (read, DLAB=0) */
#define UART_DLL 0 /* divisor latch low (DLAB=1) */
#define UART_IER 1
#define UART_DLM 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_DR 0x01   /* data ready */
#define LSR_THRE 0x20 /* transmit holding register empty */
#define LCR_DLAB 0x80
#define LCR_8N1 0x03

static volatile u32 console_lock;

void serial_init(void)
{
    outb(COM1 + UART_IER, 0x00);     /* polled: no interrupts */
    outb(COM1 + UART_LCR, LCR_DLAB);
    outb(COM1 + UART_DLL, 0x01);     /* 115200 baud (divisor 1 of 1.8432 MHz / 16) */
    outb(COM1 + UART_DLM, 0x00);
    outb(COM1 + UART_LCR, LCR_8N1);
    outb(COM1 + UART_FCR, 0x07);     /* enable and clear FIFOs */
    outb(COM1 + UART_MCR, 0x03);     /* DTR, RTS */
}

static void put_raw(char c)
{
    /* Bounded wait: a device that never reports THRE must not hang the guest. */
    for (u32 i = 0; i < 100000 && !(inb(COM1 + UART_LSR) & LSR_THRE); i++)
        cpu_relax();
    outb(COM1 + UART_THR, (u8)c);
}

static void lock(void)
{
    while (atomic_xchg32(&console_lock, 1))
        while (atomic_load32(&console_lock))
            cpu_relax();
}

static void unlock(void) { atomic_xchg32(&console_lock, 0); }

void serial_write(const char *s, size_t n)
{
    lock();
    for (size_t i = 0; i < n; i++)
        put_raw(s[i]);
    unlock();
}

int serial_getc(void)
{
    if (!(inb(COM1 + UART_LSR) & LSR_DR))
        return -1;
    return inb(COM1 + UART_RBR);
}

/* ---- formatting: %s %c %d %i %u %x %X %p %%, flags '0' and '-', width, length l/ll/z ---- */
struct out {
    char *buf;
    size_t size, len;
};

static void emit(struct out *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void emit_num(struct out *o, u64 v, unsigned base, int neg, int width, int zero, int left,
                     int upper)
{
    char tmp[24];
    int n = 0;
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v);
    int total = n + neg;
    if (neg && zero)
        emit(o, '-');
    if (!left)
        for (; total < width; total++)
            emit(o, zero ? '0' : ' ');
    if (neg && !zero)
        emit(o, '-');
    while (n)
        emit(o, tmp[--n]);
    if (left)
        for (; total < width; total++)
            emit(o, ' ');
}

int kvsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = {buf, size, 0};
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            emit(&o, *fmt);
            continue;
        }
        fmt++;
        int zero = 0, left = 0, width = 0, lng = 0;
        for (;; fmt++) {
            if (*fmt == '0')
                zero = 1;
            else if (*fmt == '-')
                left = 1;
            else
                break;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'z') {
            lng++;
            fmt++;
        }
        switch (*fmt) {
        case 'd':
        case 'i': {
            i64 v = lng ? va_arg(ap, long) : va_arg(ap, int);
            emit_num(&o, v < 0 ? (u64)-v : (u64)v, 10, v < 0, width, zero, left, 0);
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            u64 v = lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
            emit_num(&o, v, *fmt == 'u' ? 10 : 16, 0, width, zero, left, *fmt == 'X');
            break;
        }
        case 'p':
            emit(&o, '0');
            emit(&o, 'x');
            emit_num(&o, (u64)va_arg(ap, void *), 16, 0, width, zero, left, 0);
            break;
        case 'c':
            emit(&o, (char)va_arg(ap, int));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int n = (int)strlen(s);
            if (!left)
                for (int i = n; i < width; i++)
                    emit(&o, ' ');
            while (*s)
                emit(&o, *s++);
            if (left)
                for (int i = n; i < width; i++)
                    emit(&o, ' ');
            break;
        }
        case '%':
            emit(&o, '%');
            break;
        case 0:
            fmt--;
            break;
        default:
            emit(&o, '%');
            emit(&o, *fmt);
        }
    }
    if (size)
        buf[o.len < size ? o.len : size - 1] = 0;
    return (int)o.len;
}

int ksnprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = kvsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

void kprintf(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = kvsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(line) - 1)
        n = sizeof(line) - 1;
    serial_write(line, (size_t)n);
}
