//! What an exporter sends back: one file (`FileSend.DiffCopy` as BytesMessages), or a
//! directory tree as fsutil's receiver takes it (Packets), staged and then written as a tar.

use super::*;

/// Receives an exporter's file (a tar) into `dest`.
pub(super) struct FileSendService {
    pub(super) dest: PathBuf,
}

pub(super) type BytesStream = Pin<Box<dyn Stream<Item = Result<BytesMessage, Status>> + Send>>;

#[tonic::async_trait]
impl file_send_server::FileSend for FileSendService {
    type DiffCopyStream = BytesStream;

    async fn diff_copy(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<BytesStream>, Status> {
        let dest = self.dest.clone();
        let mut incoming = request.into_inner();
        let written = async {
            let mut f = tokio::fs::File::create(&dest).await?;
            while let Some(m) = incoming.message().await.map_err(std::io::Error::other)? {
                f.write_all(&m.data).await?;
            }
            f.flush().await
        }
        .await;
        if let Err(e) = written {
            // The sender is still sending: take the rest off the wire so that it sees the
            // error instead of waiting for room to send.
            drain(&mut incoming).await;
            return Err(Status::internal(format!("{}: {e}", dest.display())));
        }
        let none: BytesStream = Box::pin(futures_util::stream::empty());
        Ok(Response::new(none))
    }
}

/// Receives a directory tree as fsutil's receiver does: STAT packets (an empty one ends
/// them), a REQ for each regular file's contents by its index, DATA packets closed by an
/// empty one, then FIN both ways. Contents go into `staging/<index>`; the stats into `slot`.
#[derive(Clone)]
pub(super) struct TreeReceiver {
    pub(super) staging: PathBuf,
    pub(super) slot: TreeSlot,
}

impl tonic::server::StreamingService<Packet> for TreeReceiver {
    type Response = Packet;
    type ResponseStream = PacketStream;
    type Future = BoxFut<Result<Response<PacketStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Packet>>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            tracing::debug!("the exporter sends a tree");
            let incoming = request.into_inner();
            // Unbounded: REQs must never wait for the sender, which may be busy sending
            // contents that only this side's reading loop takes off the wire.
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Packet, Status>>();
            tokio::spawn(async move {
                let mut incoming = incoming;
                let r = receive_tree(&mut incoming, &tx, &me.staging).await;
                tracing::debug!(
                    "tree received: {}",
                    match &r {
                        Ok(s) => format!("{} entries", s.len()),
                        Err(e) => e.clone(),
                    }
                );
                let failed = r.is_err();
                if let Err(e) = &r {
                    let _ = tx.send(Ok(Packet {
                        r#type: PacketType::PacketErr as i32,
                        data: e.clone().into_bytes(),
                        ..Default::default()
                    }));
                }
                me.slot.send_replace(Some(r));
                if failed {
                    // The sender stops on the ERR, but only after what it is sending now
                    // has gone out: keep taking it off the wire, or both sides wait forever.
                    drain(&mut incoming).await;
                }
            });
            let out: PacketStream =
                Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|m| (m, rx))
                }));
            Ok(Response::new(out))
        })
    }
}

/// Reads a stream to its end, dropping what comes (after an error: see the callers).
pub(super) async fn drain<T>(incoming: &mut Streaming<T>) {
    while let Ok(Some(_)) = incoming.message().await {}
}

/// A file asked for: its staging path, the open file once contents come, bytes so far and
/// bytes its entry announced.
pub(super) struct Pending {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    got: u64,
    want: u64,
}

/// How many files may be open at once while their contents come (fsutil's sender sends four
/// at a time).
pub(super) const MAX_OPEN: usize = 64;

pub(super) async fn receive_tree(
    incoming: &mut Streaming<Packet>,
    tx: &tokio::sync::mpsc::UnboundedSender<Result<Packet, Status>>,
    staging: &Path,
) -> Result<Vec<Stat>, String> {
    let send = |p: Packet| {
        tx.send(Ok(p))
            .map_err(|_| "the session closed while receiving".to_string())
    };
    let mut stats: Vec<Stat> = Vec::new();
    let mut open: HashMap<u32, Pending> = HashMap::new();
    let mut files_open = 0usize;
    let mut stats_done = false;
    let mut fin_sent = false;
    loop {
        let p = match incoming.message().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(s) => return Err(format!("the remote BuildKit's stream: {}", s.message())),
        };
        match PacketType::try_from(p.r#type) {
            Ok(PacketType::PacketStat) if stats_done => {
                return Err("an entry after the end of the listing".into());
            }
            Ok(PacketType::PacketStat) => match p.stat {
                None => stats_done = true,
                Some(st) => {
                    let id = u32::try_from(stats.len()).map_err(|_| "too many entries")?;
                    if st.mode & GO_MODE_TYPE == 0 && st.linkname.is_empty() {
                        open.insert(
                            id,
                            Pending {
                                path: staging.join(id.to_string()),
                                file: None,
                                got: 0,
                                want: st.size.max(0) as u64,
                            },
                        );
                        send(Packet {
                            r#type: PacketType::PacketReq as i32,
                            id,
                            ..Default::default()
                        })?;
                    }
                    stats.push(st);
                }
            },
            Ok(PacketType::PacketData) => {
                let what = |id: u32| {
                    stats
                        .get(id as usize)
                        .map(|s| s.path.clone())
                        .unwrap_or_else(|| format!("#{id}"))
                };
                let Some(pending) = open.get_mut(&p.id) else {
                    return Err(format!(
                        "contents of {} that were not asked for",
                        what(p.id)
                    ));
                };
                if pending.file.is_none() {
                    if files_open >= MAX_OPEN {
                        return Err(format!("more than {MAX_OPEN} files sent at once"));
                    }
                    let f = tokio::fs::File::create(&pending.path)
                        .await
                        .map_err(|e| format!("{}: {e}", pending.path.display()))?;
                    pending.file = Some(f);
                    files_open += 1;
                }
                if p.data.is_empty() {
                    let Some(Pending {
                        file: Some(mut f),
                        got,
                        want,
                        ..
                    }) = open.remove(&p.id)
                    else {
                        return Err(format!(
                            "contents of {} that were not asked for",
                            what(p.id)
                        ));
                    };
                    files_open -= 1;
                    f.flush().await.map_err(|e| e.to_string())?;
                    if got != want {
                        return Err(format!(
                            "{}: {got} bytes came, its entry said {want}",
                            what(p.id)
                        ));
                    }
                } else if let Some(f) = pending.file.as_mut() {
                    pending.got += p.data.len() as u64;
                    if pending.got > pending.want {
                        return Err(format!(
                            "{}: more bytes came than its entry said ({})",
                            what(p.id),
                            pending.want
                        ));
                    }
                    f.write_all(&p.data).await.map_err(|e| e.to_string())?;
                }
            }
            Ok(PacketType::PacketFin) if fin_sent => return Ok(stats),
            Ok(PacketType::PacketFin) => return Err("the sender stopped before the end".into()),
            Ok(PacketType::PacketErr) => {
                return Err(format!(
                    "the remote BuildKit could not send: {}",
                    String::from_utf8_lossy(&p.data)
                ));
            }
            _ => {}
        }
        if stats_done && open.is_empty() && !fin_sent {
            send(Packet {
                r#type: PacketType::PacketFin as i32,
                ..Default::default()
            })?;
            fin_sent = true;
        }
    }
    if fin_sent {
        Ok(stats)
    } else {
        Err("the stream ended before the whole tree came".into())
    }
}

/// Writes a received tree as a tar (entries in the order they came; a regular file's
/// contents from `staging/<index>`), for the same extraction as the embedded engine's
/// `local` output.
pub fn tree_to_tar(
    stats: &[Stat],
    staging: &Path,
    out: impl std::io::Write,
) -> std::io::Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    for (i, st) in stats.iter().enumerate() {
        let m = st.mode;
        let mut perm = m & 0o777;
        if m & SETUID != 0 {
            perm |= 0o4000;
        }
        if m & SETGID != 0 {
            perm |= 0o2000;
        }
        if m & STICKY != 0 {
            perm |= 0o1000;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(perm);
        h.set_uid(u64::from(st.uid));
        h.set_gid(u64::from(st.gid));
        h.set_mtime(st.mod_time.max(0) as u64 / 1_000_000_000);
        h.set_size(0);
        let kind = if m & DIR != 0 {
            tar::EntryType::Directory
        } else if m & SYMLINK != 0 {
            tar::EntryType::Symlink
        } else if m & DEVICE != 0 && m & CHAR != 0 {
            tar::EntryType::Char
        } else if m & DEVICE != 0 {
            tar::EntryType::Block
        } else if m & PIPE != 0 {
            tar::EntryType::Fifo
        } else if m & SOCKET != 0 {
            continue;
        } else if !st.linkname.is_empty() {
            tar::EntryType::Link
        } else {
            tar::EntryType::Regular
        };
        h.set_entry_type(kind);
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                b.append_link(&mut h, &st.path, &st.linkname)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                h.set_device_major(st.devmajor.max(0) as u32)?;
                h.set_device_minor(st.devminor.max(0) as u32)?;
                b.append_data(&mut h, &st.path, std::io::empty())?;
            }
            tar::EntryType::Regular => {
                let f = std::fs::File::open(staging.join(i.to_string()))?;
                h.set_size(f.metadata()?.len());
                b.append_data(&mut h, &st.path, f)?;
            }
            _ => b.append_data(&mut h, &st.path, std::io::empty())?,
        }
    }
    b.into_inner()?.flush()
}
