//! A scripted in-memory provider, for tests that need a sandbox but not a
//! real one (no bubblewrap, no E2B): every process it starts prints the
//! same events, then exits, hangs or breaks off, and it counts what the
//! run did with it.
//!
//! Built for the crate's own tests and, with the `testing` feature, for
//! integration tests; never part of a release build.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::sync::lock;

use super::{
    ExitStatus, ProcessEvent, ProcessSpec, ProcessStream, Sandbox, SandboxError, SandboxFile,
    SandboxProvider, SandboxSpec,
};

/// What the scripted process does after printing its events.
#[derive(Debug, Clone)]
pub enum Then {
    /// Exits with this code.
    Exit(i32),
    /// Never ends: the run has to give up on it.
    Hang,
    /// The stream ends without an exit, as a cut connection does.
    Cut,
}

/// What the run did with the provider's sandboxes.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sandboxes created.
    pub created: AtomicUsize,
    /// Sandboxes destroyed.
    pub destroyed: AtomicUsize,
    /// The paths of each upload, in order.
    pub uploads: Mutex<Vec<Vec<String>>>,
    /// The environment of each process started.
    pub envs: Mutex<Vec<BTreeMap<String, String>>>,
}

impl Counters {
    /// How many sandboxes were created so far.
    pub fn created(&self) -> usize {
        self.created.load(Ordering::SeqCst)
    }

    /// How many sandboxes were destroyed so far.
    pub fn destroyed(&self) -> usize {
        self.destroyed.load(Ordering::SeqCst)
    }
}

/// The provider.
#[derive(Debug)]
pub struct Scripted {
    output: Vec<ProcessEvent>,
    then: Then,
    counters: Arc<Counters>,
}

impl Scripted {
    /// Every process prints `output`, then does `then`.
    pub fn new(output: Vec<ProcessEvent>, then: Then) -> Self {
        Scripted {
            output,
            then,
            counters: Arc::default(),
        }
    }

    /// The counters, shared with every sandbox made.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }
}

struct ScriptedSandbox {
    output: Vec<ProcessEvent>,
    then: Then,
    counters: Arc<Counters>,
}

#[async_trait]
impl SandboxProvider for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn create(&self, _spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
        self.counters.created.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(ScriptedSandbox {
            output: self.output.clone(),
            then: self.then.clone(),
            counters: self.counters.clone(),
        }))
    }
}

#[async_trait]
impl Sandbox for ScriptedSandbox {
    fn id(&self) -> &str {
        "sbx-test"
    }

    async fn upload(&self, files: Vec<SandboxFile>) -> Result<(), SandboxError> {
        let paths = files.into_iter().map(|f| f.path).collect();
        lock(&self.counters.uploads).push(paths);
        Ok(())
    }

    async fn start(&self, process: ProcessSpec) -> Result<ProcessStream, SandboxError> {
        lock(&self.counters.envs).push(process.envs);
        let events = futures::stream::iter(self.output.clone().into_iter().map(Ok));
        let tail: ProcessStream = match self.then {
            Then::Exit(code) => futures::stream::iter([Ok(ProcessEvent::Exited(ExitStatus {
                code: Some(code),
                status: format!("exit status {code}"),
            }))])
            .boxed(),
            Then::Hang => futures::stream::pending().boxed(),
            Then::Cut => futures::stream::empty().boxed(),
        };
        Ok(events.chain(tail).boxed())
    }

    async fn read_file(&self, _path: &str) -> Result<Bytes, SandboxError> {
        Ok(Bytes::new())
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        self.counters.destroyed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
