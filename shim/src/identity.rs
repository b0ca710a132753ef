//! Identity of this process, for the hello: who the recorder is talking to.

/// Identity of this process, for the hello.
#[derive(Debug, Clone)]
pub struct Identity {
    pub client_id: String,
    pub pid: i64,
    pub ppid: i64,
    pub host: String,
    pub process: String,
    pub exe: String,
}

impl Identity {
    /// The identity of the calling process, with a fresh `client_id`.
    pub fn of_this_process() -> Identity {
        // SAFETY: getpid/getppid have no preconditions.
        let (pid, ppid) = unsafe { (libc::getpid(), libc::getppid()) };
        let exe = std::fs::read_link("/proc/self/exe")
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        Identity {
            client_id: uuid::Uuid::now_v7().to_string(),
            pid: i64::from(pid),
            ppid: i64::from(ppid),
            host: hostname(),
            process: read_trimmed("/proc/self/comm"),
            exe,
        }
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most buffer.len() bytes.
    if unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } != 0 {
        return String::new();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}
