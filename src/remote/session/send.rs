//! `FileSync.DiffCopy`: local sources sent as fsutil's sender does (Go's walk order, one STAT
//! per entry, file contents on request).

use super::*;

pub(super) struct FileSyncService {
    pub(super) locals: Arc<Locals>,
}

/// Go's os.FileMode of a unix mode: permissions, setuid/setgid/sticky and the type as Go
/// spells them.
pub fn go_mode(mode: u32) -> u32 {
    let mut m = mode & 0o777;
    match mode & libc::S_IFMT {
        libc::S_IFDIR => m |= DIR,
        libc::S_IFLNK => m |= SYMLINK,
        libc::S_IFBLK => m |= DEVICE,
        libc::S_IFCHR => m |= DEVICE | CHAR,
        libc::S_IFIFO => m |= PIPE,
        libc::S_IFSOCK => m |= SOCKET,
        _ => {}
    }
    if mode & libc::S_ISUID != 0 {
        m |= SETUID;
    }
    if mode & libc::S_ISGID != 0 {
        m |= SETGID;
    }
    if mode & libc::S_ISVTX != 0 {
        m |= STICKY;
    }
    m
}

/// The entries of `root` in `filepath.Walk` order (the root itself left out), filtered.
pub fn walk(
    root: &Path,
    filter: &rootless::patterns::Filter,
) -> std::io::Result<Vec<(Stat, PathBuf)>> {
    let mut out = Vec::new();
    walk_dir(root, "", filter, &mut out)?;
    Ok(out)
}

pub(super) fn walk_dir(
    dir: &Path,
    rel: &str,
    filter: &rootless::patterns::Filter,
    out: &mut Vec<(Stat, PathBuf)>,
) -> std::io::Result<()> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    for name in names {
        let path = dir.join(&name);
        let md = std::fs::symlink_metadata(&path)?;
        let r = if rel.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", name.to_string_lossy())
        };
        if !filter.keeps(&r, md.is_dir()) {
            continue;
        }
        let linkname = if md.file_type().is_symlink() {
            std::fs::read_link(&path)?.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let (major, minor) = if md.file_type().is_file() || md.is_dir() {
            (0, 0)
        } else {
            let dev = md.rdev();
            (libc::major(dev) as i64, libc::minor(dev) as i64)
        };
        out.push((
            Stat {
                path: r.clone(),
                mode: go_mode(md.mode()),
                // As BuildKit's own client sends local files (and envkit's engine copies
                // them): owned by root, whoever owns them here.
                uid: 0,
                gid: 0,
                size: if md.is_file() { md.len() as i64 } else { 0 },
                mod_time: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                linkname,
                devmajor: major,
                devminor: minor,
                xattrs: HashMap::new(),
            },
            path.clone(),
        ));
        if md.is_dir() {
            walk_dir(&path, &r, filter, out)?;
        }
    }
    Ok(())
}

pub(super) fn values(req: &tonic::metadata::MetadataMap, key: &str) -> Vec<String> {
    req.get_all(key)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect()
}

/// Go's os.ModeType: a file whose mode has none of these has contents to send.
pub(super) const GO_MODE_TYPE: u32 = go::TYPE;

pub(super) type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send>>;

#[tonic::async_trait]
impl file_sync_server::FileSync for FileSyncService {
    type DiffCopyStream = PacketStream;

    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<PacketStream>, Status> {
        let md = request.metadata();
        let name = values(md, "dir-name")
            .into_iter()
            .next()
            .unwrap_or_default();
        let Some(root) = self.locals.0.get(&name).cloned() else {
            return Err(Status::not_found(format!(
                "envkit's session has no local source {name:?} (it has: {})",
                self.locals.0.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        let filter = rootless::patterns::Filter::from_lists(
            &values(md, "include-patterns"),
            &values(md, "exclude-patterns"),
        );
        let walked = tokio::task::spawn_blocking(move || walk(&root, &filter))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("reading the local source {name:?}: {e}")))?;
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Packet, Status>>(64);
        let files: HashMap<u32, PathBuf> = walked
            .iter()
            .enumerate()
            .filter(|(_, (st, _))| st.mode & GO_MODE_TYPE == 0)
            .map(|(i, (_, p))| (i as u32, p.clone()))
            .collect();
        let stats = tx.clone();
        tokio::spawn(async move {
            for (st, _) in walked {
                let p = Packet {
                    r#type: PacketType::PacketStat as i32,
                    stat: Some(st),
                    ..Default::default()
                };
                if stats.send(Ok(p)).await.is_err() {
                    return;
                }
            }
            let end = Packet {
                r#type: PacketType::PacketStat as i32,
                ..Default::default()
            };
            let _ = stats.send(Ok(end)).await;
        });
        tokio::spawn(async move {
            loop {
                let p = match incoming.message().await {
                    Ok(Some(p)) => p,
                    _ => return,
                };
                match PacketType::try_from(p.r#type) {
                    Ok(PacketType::PacketReq) => {
                        let Some(path) = files.get(&p.id).cloned() else {
                            let _ = tx
                                .send(Err(Status::invalid_argument(format!(
                                    "no file id {}",
                                    p.id
                                ))))
                                .await;
                            return;
                        };
                        if send_file(&tx, p.id, &path).await.is_err() {
                            return;
                        }
                    }
                    Ok(PacketType::PacketFin) => {
                        let fin = Packet {
                            r#type: PacketType::PacketFin as i32,
                            ..Default::default()
                        };
                        let _ = tx.send(Ok(fin)).await;
                        return;
                    }
                    Ok(PacketType::PacketErr) => {
                        tracing::warn!(
                            "the remote BuildKit gave up on a local source: {}",
                            String::from_utf8_lossy(&p.data)
                        );
                        return;
                    }
                    _ => {}
                }
            }
        });
        let out =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        Ok(Response::new(Box::pin(out)))
    }
}

/// One file's contents as DATA packets, then the empty DATA that ends it.
pub(super) async fn send_file(
    tx: &tokio::sync::mpsc::Sender<Result<Packet, Status>>,
    id: u32,
    path: &Path,
) -> Result<(), ()> {
    let data = |data: Vec<u8>| Packet {
        r#type: PacketType::PacketData as i32,
        id,
        data,
        ..Default::default()
    };
    match tokio::fs::File::open(path).await {
        Ok(mut f) => {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match f.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => tx.send(Ok(data(buf[..n].to_vec()))).await.map_err(|_| ())?,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("{}: {e}", path.display()))))
                            .await;
                        return Err(());
                    }
                }
            }
        }
        Err(e) => {
            let _ = tx
                .send(Err(Status::internal(format!("{}: {e}", path.display()))))
                .await;
            return Err(());
        }
    }
    tx.send(Ok(data(Vec::new()))).await.map_err(|_| ())
}
