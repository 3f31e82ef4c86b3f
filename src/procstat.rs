//! Memory figures of this process from `/proc/self/status`, and of the machine from
//! `/proc/meminfo` (Linux); `None` elsewhere. Used by build summaries and benchmarks, and by
//! `serve` to tell whether its indexes fit the memory before reading them all in.

fn field(name: &str) -> Option<u64> {
    field_of("/proc/self/status", name)
}

fn field_of(file: &str, name: &str) -> Option<u64> {
    let s = std::fs::read_to_string(file).ok()?;
    let line = s.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Peak resident set size.
pub fn peak_rss() -> Option<u64> {
    field("VmHWM:")
}

/// Resident anonymous memory (heap, stacks): what the process itself needs.
pub fn rss_anon() -> Option<u64> {
    field("RssAnon:")
}

/// Resident file-backed memory (memory-mapped index pages, shared through the page cache).
pub fn rss_file() -> Option<u64> {
    field("RssFile:")
}

/// Memory the machine can give without swapping (`MemAvailable`: free memory plus the page
/// cache and other memory it can reclaim).
pub fn mem_available() -> Option<u64> {
    field_of("/proc/meminfo", "MemAvailable:")
}
