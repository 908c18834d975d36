//! The mount daemon's control handler: `domfs hidden …` and `domfs audit …` on a live
//! mount arrive here through the control socket (see [`crate::control`]), already checked
//! to come from root or the operator group.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::control::peer::Peer;
use crate::control::protocol::{Answer, Request};
use crate::control::server::{Handler, write_answer};
use crate::filesystem::Filesystem;

pub struct MountControl {
    pub fs: Arc<Filesystem>,
    /// The agent that released the key (agent mode): `domfs audit` asks it for the
    /// entries the TTP keeps.
    pub agent: Option<PathBuf>,
}

impl Handler for MountControl {
    fn handle(&self, request: Request, peer: &Peer, out: &mut dyn Write) -> std::io::Result<()> {
        if self.fs.is_revoked() {
            return write_answer(out, &Answer::failed("access to this volume was revoked", 3));
        }
        if super::hidden::live::serve_as(&self.fs, &request, peer, out)? {
            return Ok(());
        }
        if super::audit::live::serve(&self.fs, self.agent.as_deref(), &request, out)? {
            return Ok(());
        }
        write_answer(
            out,
            &Answer::failed("this daemon does not serve that request", 2),
        )
    }
}
