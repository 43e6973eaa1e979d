//! A writer for the `newc` cpio format (the one the Linux initramfs unpacker reads).

/// An uncompressed newc archive holding `files` (path inside the archive, mode bits, contents)
/// and the trailer. Linux unpacks archives appended to an initramfs in order, so this can be
/// concatenated to a base image to add or replace files.
pub fn newc_archive(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, (name, mode, data)) in files.iter().enumerate() {
        entry(&mut out, ino as u32 + 1, name, *mode, data);
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
    out
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_has_header_name_data_and_trailer() {
        let a = newc_archive(&[("test.sh", 0o100755, b"echo hi\n")]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 512, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("test.sh\0"));
        assert!(text.contains("echo hi\n"));
        assert!(text.contains("TRAILER!!!"));
        // c_filesize of the first entry (field 7) is 8.
        assert_eq!(&a[6 + 6 * 8..6 + 7 * 8], b"00000008");
    }
}
