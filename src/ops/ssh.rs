//! SSH agent forwarding for `ssh` mounts. Each step gets a socket of its own, served by a
//! small proxy in the builder that hands every connection to the user's agent. The helper
//! gives that socket the owner and mode the mount asks for (inside the namespace); the user's
//! own agent socket is never touched, and the step never sees a host path.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::OpsError;

static SERIAL: AtomicU64 = AtomicU64::new(0);

/// A listening socket that forwards to an agent; stops and cleans up when dropped.
pub(crate) struct AgentProxy {
    dir: PathBuf,
    pub socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl AgentProxy {
    pub(crate) fn start(agent: &Path) -> Result<AgentProxy, OpsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpsError::Ssh { path, source }
        };
        let md = std::fs::metadata(agent).map_err(io(agent))?;
        if !md.file_type().is_socket() {
            return Err(OpsError::Invalid(format!(
                "ssh agent {} is not a socket",
                agent.display()
            )));
        }
        // A socket path has at most 107 bytes: a short dir in the temp dir, not in the store.
        let dir = std::env::temp_dir().join(format!(
            "envkit-ssh-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        let socket = dir.join("agent.sock");
        let listener = match tokio::net::UnixListener::bind(&socket) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io(&socket)(e));
            }
        };
        let agent = agent.to_path_buf();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::UnixStream::connect(&agent).await {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                    }
                });
            }
        });
        Ok(AgentProxy { dir, socket, task })
    }
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn forwards_connections_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let agent_path = d.path().join("agent");
        let agent = tokio::net::UnixListener::bind(&agent_path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = agent.accept().await {
                let mut buf = [0u8; 4];
                if c.read_exact(&mut buf).await.is_ok() {
                    let _ = c.write_all(b"pong").await;
                }
            }
        });
        let proxy = AgentProxy::start(&agent_path).unwrap();
        for _ in 0..2 {
            let mut c = tokio::net::UnixStream::connect(&proxy.socket)
                .await
                .unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong");
        }
        let sock = proxy.socket.clone();
        drop(proxy);
        assert!(!sock.exists());
        let not_socket = d.path().join("file");
        std::fs::write(&not_socket, b"key").unwrap();
        assert!(AgentProxy::start(&not_socket).is_err());
    }
}
