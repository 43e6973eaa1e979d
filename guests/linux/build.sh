#!/usr/bin/env bash
# Builds the ironvirt Linux test guests and caches them. See guests/linux/README.md.
#
#   guests/linux/build.sh              patched minimal kernel (boots under software-nested KVM)
#   guests/linux/build.sh --stock      Debian cloud kernel + virtio modules (hardware KVM hosts)
#   guests/linux/build.sh --test-cpio SCRIPT
#                                      write to stdout a newc cpio holding SCRIPT as /test.sh,
#                                      to append to an initramfs.cpio built here
#
# Builds print progress on stderr and the output directory as the last stdout line. Results
# live in ${IRONVIRT_CACHE:-$HOME/.cache/ironvirt}/linux-{test,stock}-<hash>/ (the hash covers
# every input, this script included) with a linux-{test,stock} symlink to the newest one;
# unchanged inputs return at once. Missing Debian packages are installed with apt-get (root).
# IRONVIRT_JOBS (default 2) sets make -j.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${IRONVIRT_CACHE:-$HOME/.cache/ironvirt}
jobs=${IRONVIRT_JOBS:-2}

src_pkg=linux-source-6.12
src_tarball=/usr/src/linux-source-6.12.tar.xz
src_dir=$cache/linux-src-6.12
stock_meta=linux-image-cloud-amd64

# clearcpuid: on software-nested KVM (kvm_pvm) guest CPUID runs natively on the host CPU, so
# no CPU template can hide these there (see README, "KVM on software-nested machines"); on
# hardware hosts ironvirt's portable template hides them too and the option changes nothing.
test_cmdline="console=ttyS0 reboot=a panic=-1 noint3selftest no_timer_check 8250.nr_uarts=1 rcupdate.rcu_cpu_stall_suppress=1 clearcpuid=cx16,popcnt,smap,xsave"
stock_cmdline="console=ttyS0 reboot=a panic=-1"

# Modules the --stock initramfs loads (plus their dependencies from modules.dep); any of them
# may be built into the kernel instead, which is checked against modules.builtin.
stock_modules=(
    virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev virtio_mmio
    virtio_blk virtio_net virtio_console virtio_rng virtio_balloon
    vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport ext4
)

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() {
    printf 'build.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# Symlinks to busybox in the initramfs. Only these: once /proc is mounted, the shell and every
# busybox applet that runs a command find applets by name without links (FEATURE_SH_STANDALONE
# and FEATURE_PREFER_APPLETS; they exec /proc/self/exe), while each link costs the kernel
# ~40 ms of emulated work to unpack under software-nested KVM (all ~270 of them added 11-14 s
# to the boot). sh: the #! of /init; mount: mounts /proc; env: #!/usr/bin/env scripts.
busybox_links=(bin/sh bin/mount usr/bin/env)

# --- packages ---------------------------------------------------------------------------------

apt_updated=
apt_update_once() {
    [[ -n $apt_updated ]] && return
    log "apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
    apt_updated=1
}

# ensure_packages PKG...: install those not installed yet.
ensure_packages() {
    local pkg status missing=()
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ $status == installed ]] || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return
    [[ $(id -u) == 0 ]] || die "missing Debian packages: ${missing[*]}; install them as root: apt-get install -y ${missing[*]}"
    log "installing ${missing[*]}"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
}

pkg_version() { dpkg-query -W -f='${Version}' "$1"; }

# --- newc cpio writer (no root needed for device nodes; fixed mtimes) ---------------------------
# Format: include/linux/... "070701" header of 13 8-digit hex fields, NUL-terminated name padded
# to 4 bytes, data padded to 4 bytes, "TRAILER!!!" entry last. Functions write to stdout.

cpio_ino=0
cpio_pad=('' '\0' '\0\0' '\0\0\0')
cpio_entry() { # NAME MODE SIZE RDEV_MAJOR RDEV_MINOR
    local name=$1 mode=$2 size=$3 namesize=$((${#1} + 1))
    cpio_ino=$((cpio_ino + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
        "$cpio_ino" "$mode" 0 0 1 0 "$size" 0 0 "$4" "$5" "$namesize" 0 "$name"
    printf "${cpio_pad[(4 - (110 + namesize) % 4) % 4]}"
}
cpio_dir() { cpio_entry "$1" $((8#040000 | 8#$2)) 0 0 0; }
cpio_chardev() { cpio_entry "$1" $((8#020000 | 8#$2)) 0 "$3" "$4"; }
cpio_symlink() {
    cpio_entry "$1" $((8#120777)) ${#2} 0 0
    printf '%s' "$2"
    printf "${cpio_pad[(4 - ${#2} % 4) % 4]}"
}
cpio_file() { # NAME SOURCE MODE
    local size
    [[ -f $2 ]] || die "cpio: $2 is not a regular file"
    size=$(stat -L -c %s "$2")
    cpio_entry "$1" $((8#100000 | 8#$3)) "$size" 0 0
    cat "$2"
    printf "${cpio_pad[(4 - size % 4) % 4]}"
}
cpio_data() { # NAME MODE CONTENT
    cpio_entry "$1" $((8#100000 | 8#$2)) ${#3} 0 0
    printf '%s' "$3"
    printf "${cpio_pad[(4 - ${#3} % 4) % 4]}"
}
cpio_trailer() { cpio_entry TRAILER!!! 0 0 0 0; }

# write_initramfs OUT [MODULE_DIR]: busybox with applet symlinks, /init, /dev nodes, fstab;
# with MODULE_DIR, also its *.ko and load.order under /lib/modules.
write_initramfs() {
    local out=$1 moddir=${2:-} d applet f
    [[ -x /bin/busybox ]] || die "/bin/busybox missing (package busybox-static)"
    [[ $(env -i /bin/busybox sh -c 'type cat' 2>&1) == 'cat is cat' ]] \
        || die "/bin/busybox must be built with FEATURE_SH_STANDALONE (Debian's busybox-static is)"
    ldd /bin/busybox >/dev/null 2>&1 && die "/bin/busybox is dynamically linked; install busybox-static"
    {
        for d in bin sbin usr usr/bin usr/sbin dev proc sys tmp root etc lib; do
            cpio_dir "$d" 755
        done
        cpio_chardev dev/console 600 5 1
        cpio_chardev dev/ttyS0 660 4 64
        cpio_chardev dev/null 666 1 3
        cpio_file bin/busybox /bin/busybox 755
        for applet in "${busybox_links[@]}"; do
            cpio_symlink "$applet" /bin/busybox
        done
        cpio_file init "$here/init.sh" 755
        cpio_data etc/fstab 644 "$(printf '%s\n' \
            'proc     /proc proc     nosuid,nodev,noexec 0 0' \
            'sysfs    /sys  sysfs    nosuid,nodev,noexec 0 0' \
            'devtmpfs /dev  devtmpfs nosuid              0 0')
"
        cpio_data etc/passwd 644 $'root:x:0:0:root:/root:/bin/sh\n'
        cpio_data etc/group 644 $'root:x:0:\n'
        if [[ -n $moddir ]]; then
            cpio_dir lib/modules 755
            for f in "$moddir"/*; do
                cpio_file "lib/modules/${f##*/}" "$f" 644
            done
        fi
        cpio_trailer
    } >"$out"
}

# check_initramfs CPIO [PATH...]: GNU cpio reads it back whole, with the files init needs.
check_initramfs() {
    local cpio=$1 listing f
    shift
    listing=$(cpio -it --quiet <"$cpio") || die "$cpio does not read back as a cpio archive"
    for f in init etc/fstab bin/busybox bin/sh dev/console "$@"; do
        grep -qxF "$f" <<<"$listing" || die "$f missing from $cpio"
    done
    cmp -s <(cpio -i --quiet --to-stdout init <"$cpio") "$here/init.sh" || die "/init in $cpio differs from init.sh"
}

# --- cache bookkeeping ------------------------------------------------------------------------

# inputs_hash LINE...: hash of this script, init.sh and the given extra lines (file hashes,
# package versions).
inputs_hash() {
    {
        sha256sum "${BASH_SOURCE[0]}" "$here/init.sh" | cut -d' ' -f1
        printf '%s\n' "$@"
    } | sha256sum | cut -c1-16
}

file_hash_lines() { # FILE...: "relative-name sha256" lines
    local f
    for f in "$@"; do
        printf '%s %s\n' "${f#"$here"/}" "$(sha256sum <"$f" | cut -d' ' -f1)"
    done
}

# publish TMPDIR FINALDIR LINKNAME: move a finished build into place and point the link at it.
publish() {
    local tmp=$1 final=$2 link=$cache/$3
    rm -rf "$final"
    mv "$tmp" "$final"
    ln -sfn "${final##*/}" "$link.tmp.$$"
    mv -T "$link.tmp.$$" "$link"
}

finish_cached() { # FINALDIR LINKNAME
    ln -sfn "${1##*/}" "$cache/$2.tmp.$$"
    mv -T "$cache/$2.tmp.$$" "$cache/$2"
    printf '%s\n' "$1"
}

# --- patched test kernel ----------------------------------------------------------------------

# ensure_source: the unpacked tree in $src_dir, re-unpacked when linux-source-6.12 changes.
ensure_source() {
    local want
    want=$(pkg_version "$src_pkg")
    if [[ -f $src_dir/.ironvirt-source && $(<"$src_dir/.ironvirt-source") == "$want" ]]; then
        return
    fi
    [[ -f $src_tarball ]] || die "$src_tarball missing (package $src_pkg)"
    log "unpacking $src_tarball ($src_pkg $want) into $src_dir"
    rm -rf "$src_dir" "$src_dir.tmp"
    mkdir -p "$src_dir.tmp"
    tar -xf "$src_tarball" -C "$src_dir.tmp" --strip-components=1
    printf '%s\n' "$want" >"$src_dir.tmp/.ironvirt-source"
    mv "$src_dir.tmp" "$src_dir"
}

# sync_patches: make the tree carry exactly patches/*.patch. The applied set is kept in
# .ironvirt-patches/ (a copy of each applied patch) so that a changed set is first reversed.
sync_patches() {
    local applied=$src_dir/.ironvirt-patches p wanted=("$here"/patches/*.patch)
    [[ -e ${wanted[0]} ]] || die "no patches in $here/patches"
    mkdir -p "$applied"
    if [[ $(cd "$applied" && sha256sum -- *.patch 2>/dev/null) == $(cd "$here/patches" && sha256sum -- *.patch) ]]; then
        return
    fi
    for p in $(find "$applied" -name '*.patch' | sort -r); do
        log "reversing old ${p##*/}"
        if ! patch -p1 -R -s -f --no-backup-if-mismatch -d "$src_dir" <"$p" >&2; then
            log "cannot reverse ${p##*/}; starting again from a fresh source tree"
            rm -rf "$src_dir"
            ensure_source
            mkdir -p "$applied"
            break
        fi
        rm "$p"
    done
    for p in "${wanted[@]}"; do
        log "applying ${p##*/}"
        patch -p1 -N -s --no-backup-if-mismatch -d "$src_dir" <"$p" >&2 \
            || die "patch ${p##*/} does not apply to $src_dir ($src_pkg $(pkg_version "$src_pkg")); fix it or delete $src_dir"
        cp "$p" "$applied/"
    done
}

# configure_kernel: tinyconfig + config.fragment, then check that every fragment line stuck.
configure_kernel() {
    local frag=$here/config.fragment line opt bad=0
    log "configuring: tinyconfig + ${frag#"$here"/}"
    make -C "$src_dir" -s tinyconfig >&2
    (cd "$src_dir" && scripts/kconfig/merge_config.sh -m .config "$frag") >"$cache/linux-test-config.log" 2>&1 \
        || die "merge_config.sh failed; see $cache/linux-test-config.log"
    make -C "$src_dir" -s olddefconfig >&2
    while read -r line; do
        case $line in
        CONFIG_*=*)
            grep -qxF "$line" "$src_dir/.config" || {
                log "config: wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$src_dir/.config" || echo 'absent (unmet dependency)')"
                bad=1
            }
            ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }
            opt=${opt%% *}
            ! grep -q "^$opt=" "$src_dir/.config" || {
                log "config: wanted $opt off, got: $(grep "^$opt=" "$src_dir/.config")"
                bad=1
            }
            ;;
        esac
    done <"$frag"
    ((bad == 0)) || die "the merged kernel config lacks options of ${frag#"$here"/} (see above)"
}

build_test() {
    local patches=("$here"/patches/*.patch) hash out tmp buildlog
    ensure_packages "$src_pkg" build-essential bc bison flex libelf-dev libssl-dev cpio \
        busybox-static xz-utils patch
    hash=$(inputs_hash \
        "$(file_hash_lines "$here/config.fragment" "${patches[@]}")" \
        "$src_pkg $(pkg_version "$src_pkg")" "busybox-static $(pkg_version busybox-static)")
    out=$cache/linux-test-$hash
    if [[ -d $out ]]; then
        finish_cached "$out" linux-test
        return
    fi

    ensure_source
    sync_patches
    configure_kernel
    buildlog=$cache/linux-test-build.log
    log "building vmlinux with make -j$jobs (about 14 min from scratch on 2 cores; log: $buildlog)"
    make -C "$src_dir" -j"$jobs" KBUILD_BUILD_USER=ironvirt KBUILD_BUILD_HOST=ironvirt vmlinux \
        >"$buildlog" 2>&1 || {
        tail -n 30 "$buildlog" >&2
        die "kernel build failed; full log: $buildlog"
    }

    tmp=$out.tmp.$$
    rm -rf "$tmp"
    mkdir -p "$tmp"
    objcopy --strip-debug "$src_dir/vmlinux" "$tmp/vmlinux"
    # The PVH entry point: a "Xen" ELF note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY).
    readelf -n "$tmp/vmlinux" | grep -Eq 'Xen +0x[0-9a-f]+[[:space:]]+Unknown note type: \(0x00000012\)' \
        || die "vmlinux has no PVH entry note (is CONFIG_PVH set?)"
    cp "$src_dir/.config" "$tmp/config"
    cp "$src_dir/System.map" "$tmp/System.map"
    write_initramfs "$tmp/initramfs.cpio"
    check_initramfs "$tmp/initramfs.cpio"
    printf '%s\n' "$test_cmdline" >"$tmp/cmdline"
    publish "$tmp" "$out" linux-test
    log "built $out"
    printf '%s\n' "$out"
}

# --- stock Debian cloud kernel ----------------------------------------------------------------

# deb_filename PKG: the .deb file name apt would download for the candidate version of PKG.
deb_filename() {
    local uris
    uris=$(apt-get download --print-uris "$1" 2>/dev/null) || {
        apt_update_once
        uris=$(apt-get download --print-uris "$1") || die "apt cannot find package $1"
    }
    awk 'NR == 1 { print $2 }' <<<"$uris"
}

# fetch_deb PKG: path of the downloaded .deb of PKG in $cache/debs (downloaded once).
fetch_deb() {
    local file dir=$cache/debs
    file=$(deb_filename "$1")
    [[ -n $file ]] || die "apt gave no download for $1"
    mkdir -p "$dir"
    if [[ ! -f $dir/$file ]]; then
        log "apt-get download $1"
        # As root, apt would warn that its _apt user cannot write to $dir; download as root.
        (cd "$dir" && apt-get download -q -o APT::Sandbox::User="$(id -un)" "$1" >&2) \
            || die "apt-get download $1 failed"
        [[ -f $dir/$file ]] || die "apt-get download $1 did not produce $file"
    fi
    printf '%s\n' "$dir/$file"
}

# stock_load_order ROOT KVER MODDIR: copy the wanted modules and their dependencies
# (decompressed) into MODDIR and write MODDIR/load.order in dependency order.
stock_load_order() {
    local root=$1 kver=$2 moddir=$3 mods=$1/lib/modules/$2 m
    local -A path_of=() deps_of=() seen=()
    local order=()
    local line file deps name
    while IFS= read -r line; do
        file=${line%%:*}
        deps=${line#*:}
        name=${file##*/}
        name=${name%%.ko*}
        name=${name//-/_}
        path_of[$name]=$file
        deps_of[$name]=$deps
    done <"$mods/modules.dep"

    visit() {
        local n=$1 d dn
        [[ -n ${seen[$n]:-} ]] && return
        seen[$n]=1
        for d in ${deps_of[$n]}; do
            dn=${d##*/}
            dn=${dn%%.ko*}
            visit "${dn//-/_}"
        done
        order+=("$n")
    }
    for m in "${stock_modules[@]}"; do
        if [[ -n ${path_of[$m]:-} ]]; then
            visit "$m"
        elif grep -Eq "/${m//_/[-_]}\.ko\$" "$mods/modules.builtin"; then
            log "stock: $m is built into the kernel"
        else
            die "stock: module $m is neither in modules.dep nor in modules.builtin of $kver"
        fi
    done

    mkdir -p "$moddir"
    : >"$moddir/load.order"
    for m in "${order[@]}"; do
        file=$mods/${path_of[$m]}
        case $file in
        *.ko) cp "$file" "$moddir/$m.ko" ;;
        *.ko.xz) xz -dc "$file" >"$moddir/$m.ko" ;;
        *.ko.zst) zstd -qdc "$file" >"$moddir/$m.ko" ;;
        *.ko.gz) gzip -dc "$file" >"$moddir/$m.ko" ;;
        *) die "stock: unknown module file type $file" ;;
        esac
        printf '%s.ko\n' "$m" >>"$moddir/load.order"
    done
    log "stock: modules in load order: ${order[*]}"
}

build_stock() {
    local meta_deb img_pkg img_deb hash out tmp work kver
    ensure_packages busybox-static cpio xz-utils zstd kmod
    meta_deb=$(fetch_deb "$stock_meta")
    img_pkg=$(dpkg-deb -f "$meta_deb" Depends | tr ',' '\n' | grep -oE 'linux-image-[^ ]+-cloud-amd64' | head -n1) \
        || die "$stock_meta does not depend on a linux-image-*-cloud-amd64 package"
    img_deb=$(fetch_deb "$img_pkg")
    hash=$(inputs_hash "stock ${img_deb##*/}" "busybox-static $(pkg_version busybox-static)")
    out=$cache/linux-stock-$hash
    if [[ -d $out ]]; then
        finish_cached "$out" linux-stock
        return
    fi

    kver=${img_pkg#linux-image-}
    tmp=$out.tmp.$$
    work=$tmp.work
    rm -rf "$tmp" "$work"
    mkdir -p "$tmp" "$work"
    log "stock: unpacking ${img_deb##*/}"
    dpkg-deb -x "$img_deb" "$work/root"
    # usrmerge layouts put modules under usr/lib; depmod -b wants ROOT/lib/modules.
    if [[ ! -d $work/root/lib/modules/$kver && -d $work/root/usr/lib/modules/$kver ]]; then
        mkdir -p "$work/root/lib"
        ln -s ../usr/lib/modules "$work/root/lib/modules"
    fi
    [[ -f $work/root/boot/vmlinuz-$kver ]] || die "stock: boot/vmlinuz-$kver missing in ${img_deb##*/}"
    [[ -f $work/root/lib/modules/$kver/modules.dep ]] || depmod -b "$work/root" "$kver" \
        || die "stock: depmod failed"
    stock_load_order "$work/root" "$kver" "$work/modules"

    cp "$work/root/boot/vmlinuz-$kver" "$tmp/vmlinuz"
    cp "$work/root/boot/config-$kver" "$tmp/config"
    write_initramfs "$tmp/initramfs.cpio" "$work/modules"
    printf '%s\n' "$stock_cmdline" >"$tmp/cmdline"
    printf '%s\n' "$img_pkg" "${img_deb##*/}" >"$tmp/kernel-package"
    rm -rf "$work"
    stock_sanity_check "$tmp"
    publish "$tmp" "$out" linux-stock
    log "built $out"
    printf '%s\n' "$out"
}

# stock_sanity_check DIR: bzImage header, and every module inside the cpio.
stock_sanity_check() {
    local dir=$1 listing m
    [[ $(dd if="$dir/vmlinuz" bs=1 skip=514 count=4 status=none) == HdrS ]] \
        || die "stock: vmlinuz is not a bzImage"
    check_initramfs "$dir/initramfs.cpio" lib/modules/load.order
    listing=$(cpio -it --quiet <"$dir/initramfs.cpio")
    while read -r m; do
        grep -qx "lib/modules/$m" <<<"$listing" || die "stock: lib/modules/$m missing from initramfs.cpio"
    done < <(cpio -i --quiet --to-stdout lib/modules/load.order <"$dir/initramfs.cpio")
}

# --- main -------------------------------------------------------------------------------------

main() {
    local mode=test
    case ${1:-} in
    "") ;;
    --stock) mode=stock ;;
    --test-cpio)
        [[ $# == 2 && -f $2 ]] || die "usage: build.sh --test-cpio SCRIPT >test.cpio"
        cpio_file test.sh "$2" 755
        cpio_trailer
        return 0
        ;;
    *) usage ;;
    esac
    (($# <= 1)) || usage

    mkdir -p "$cache"
    exec 9>"$cache/.linux-build.lock"
    flock 9 || die "cannot lock $cache/.linux-build.lock"
    if [[ $mode == stock ]]; then
        build_stock
    else
        build_test
    fi
}

# One line, so that bash has read all of it before running: editing this file while a build
# runs cannot then change what that build does.
main "$@"; exit
