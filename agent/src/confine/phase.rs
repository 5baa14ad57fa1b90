//! One SLS phase in a confined child: the privileged agent spawns `corpus-agent
//! confined-phase` (hidden) in its own session with `PR_SET_PDEATHSIG`, sends it the phase
//! as one JSON line on stdin, and reads JSON lines back on its stdout: each state's result, a
//! service request (answered on stdin by the agent, which alone may drive systemd, and only
//! the environment's own units), and a final `done`. When the phase ends, whatever is left in
//! the child's session is stopped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use corpus_pillar::TemplateContext;
use corpus_states::Plan;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reaper::{processes_in_session, stop_processes};
use super::{ConfineError, Identity, sandbox};
use crate::lifecycle::{PhaseFileSources, ProjectTreeSources};
use crate::state::{Executor, ServiceControl, StateResult};

/// The hidden subcommand the child runs.
pub const CHILD_SUBCOMMAND: &str = "confined-phase";

/// What the child needs to run one phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseRequest {
    pub identity: Identity,
    /// Read-write for the phase (Landlock), its HOME, and the parent of its TMPDIR.
    pub env_root: PathBuf,
    /// Where `salt://` resolves.
    pub file_root: PathBuf,
    pub plan: Plan,
    pub pillar: Value,
    pub grains: Value,
    pub common: Value,
    pub env: Value,
}

/// A service call the child asks the agent to make.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ServiceCall {
    Available,
    IsActive(String),
    IsEnabled(String),
    Control { verb: String, name: String },
}

/// One line from the child.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChildMessage {
    Result(Box<StateResult>),
    Service(ServiceCall),
    /// The phase ended; `clean` says the child, a subreaper, saw every process the phase
    /// started end (else the agent looks for leftovers itself).
    Done {
        landlock: bool,
        clean: bool,
    },
}

/// How long what a phase left behind gets between TERM and KILL.
const LEFTOVER_GRACE: Duration = Duration::from_millis(500);
/// How much of the child's stderr an error quotes.
const STDERR_TAIL: usize = 4096;
const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn answer(
    services: &dyn ServiceControl,
    call: &ServiceCall,
    id: &Identity,
) -> Result<bool, String> {
    let prefix = id.service_prefix();
    let own = |name: &str| {
        if name.starts_with(&prefix) {
            Ok(())
        } else {
            Err(format!(
                "service {name:?} is not the environment's: its units start with {prefix:?}"
            ))
        }
    };
    match call {
        ServiceCall::Available => services.available().map(|()| true),
        ServiceCall::IsActive(name) => own(name).and_then(|()| services.is_active(name)),
        ServiceCall::IsEnabled(name) => own(name).and_then(|()| services.is_enabled(name)),
        ServiceCall::Control { verb, name } => {
            own(name).and_then(|()| services.control(verb, name).map(|()| true))
        }
    }
}

/// Runs `request`'s phase in a confined child of `program`, calling `on_result` per state.
/// Returns whether Landlock was in force.
pub fn run_confined(
    program: &Path,
    request: &PhaseRequest,
    services: &dyn ServiceControl,
    on_result: &mut dyn FnMut(&StateResult),
) -> Result<bool, ConfineError> {
    let child_error = |m: String| ConfineError::Child(m);
    let id = &request.identity;
    let mut command = Command::new(program);
    command
        .arg(CHILD_SUBCOMMAND)
        // Nothing of the agent's environment (an enrollment token) reaches the project.
        .env_clear()
        .env("PATH", CHILD_PATH)
        .env("HOME", &request.env_root)
        .env("USER", &id.user)
        .env("LOGNAME", &id.user)
        .env("TMPDIR", request.env_root.join("tmp"))
        .env("LANG", "C.UTF-8")
        .current_dir(&request.env_root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own session: the commands it starts in their own process groups stay in it, so the
    // end of the phase finds them all.
    // SAFETY: the hook runs only async-signal-safe syscalls between fork and exec.
    unsafe {
        command.pre_exec(own_session_dying_with_agent());
    }
    let mut child = command
        .spawn()
        .map_err(|e| child_error(format!("cannot start {}: {e}", program.display())))?;
    let session = child.id() as i32;
    let result = talk(&mut child, request, services, on_result);
    let status = child.wait();
    if !matches!(result, Ok(Some((_, true)))) {
        stop_processes(|| processes_in_session(session), LEFTOVER_GRACE);
    }
    match result {
        Ok(Some((landlock, _))) => Ok(landlock),
        Ok(None) | Err(_) => {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            let tail = &stderr[stderr.len().saturating_sub(STDERR_TAIL)..];
            let why = match (result, status) {
                (Err(e), _) => e,
                (_, Ok(s)) => format!("ended before the phase did ({s})"),
                (_, Err(e)) => format!("could not be waited for: {e}"),
            };
            Err(child_error(format!("{why}: {}", tail.trim())))
        }
    }
}

/// The conversation: the request, then the child's lines until `done` (landlock, clean) or EOF.
fn talk(
    child: &mut std::process::Child,
    request: &PhaseRequest,
    services: &dyn ServiceControl,
    on_result: &mut dyn FnMut(&StateResult),
) -> Result<Option<(bool, bool)>, String> {
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("has no pipes".into());
    };
    let mut line = serde_json::to_vec(request).map_err(|e| format!("request: {e}"))?;
    line.push(b'\n');
    stdin
        .write_all(&line)
        .map_err(|e| format!("did not take its request: {e}"))?;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("output unreadable: {e}"))?;
        let message: ChildMessage = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(_) => {
                tracing::debug!(line = %line, "confined phase: not a protocol line");
                continue;
            }
        };
        match message {
            ChildMessage::Result(result) => on_result(&result),
            ChildMessage::Service(call) => {
                let reply = answer(services, &call, &request.identity);
                let mut text = serde_json::to_vec(&reply).map_err(|e| format!("reply: {e}"))?;
                text.push(b'\n');
                stdin
                    .write_all(&text)
                    .map_err(|e| format!("did not take a service reply: {e}"))?;
            }
            ChildMessage::Done { landlock, clean } => return Ok(Some((landlock, clean))),
        }
    }
    Ok(None)
}

// ---- the child side ------------------------------------------------------------------------

/// The child's end of the pipe: service calls go up to the agent and wait for its answer.
struct PipeServices {
    input: Mutex<Box<dyn BufRead + Send>>,
}

fn send(message: &ChildMessage) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)?;
    out.flush()
}

impl PipeServices {
    fn call(&self, call: ServiceCall) -> Result<bool, String> {
        let mut input = self
            .input
            .lock()
            .map_err(|_| "the service pipe is poisoned".to_string())?;
        send(&ChildMessage::Service(call)).map_err(|e| format!("cannot ask the agent: {e}"))?;
        let mut reply = String::new();
        input
            .read_line(&mut reply)
            .map_err(|e| format!("no answer from the agent: {e}"))?;
        serde_json::from_str::<Result<bool, String>>(&reply)
            .map_err(|e| format!("unreadable answer from the agent: {e}"))?
    }
}

impl ServiceControl for PipeServices {
    fn available(&self) -> Result<(), String> {
        self.call(ServiceCall::Available).map(|_| ())
    }
    fn is_active(&self, name: &str) -> Result<bool, String> {
        self.call(ServiceCall::IsActive(name.to_owned()))
    }
    fn is_enabled(&self, name: &str) -> Result<bool, String> {
        self.call(ServiceCall::IsEnabled(name.to_owned()))
    }
    fn control(&self, verb: &str, name: &str) -> Result<(), String> {
        self.call(ServiceCall::Control {
            verb: verb.to_owned(),
            name: name.to_owned(),
        })
        .map(|_| ())
    }
}

/// `corpus-agent confined-phase`: reads the request, confines itself, runs the plan and reports.
pub fn child_main() -> Result<(), ConfineError> {
    let mut input: Box<dyn BufRead + Send> = Box::new(BufReader::new(std::io::stdin()));
    let mut first = String::new();
    input
        .read_line(&mut first)
        .map_err(|e| ConfineError::Child(format!("cannot read its request: {e}")))?;
    let mut request: PhaseRequest = serde_json::from_str(&first)
        .map_err(|e| ConfineError::Child(format!("got an invalid request: {e}")))?;
    // Orphans of the phase (a command's background job, a daemon that forked away) become
    // this process's children, so the end of the phase finds every one of them.
    // SAFETY: a plain prctl on this process.
    let subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0;
    let landlock = sandbox::enter(&request.identity, &request.env_root)?;
    // The child already is the environment user; a `runas` of it would need root to switch.
    for chunk in &mut request.plan.chunks {
        if chunk
            .args
            .get("runas")
            .is_some_and(|v| super::plan_check::is_own_account(v, &request.identity))
        {
            chunk.args.remove("runas");
        }
    }
    let context = TemplateContext::new(request.pillar, request.grains, request.common, request.env);
    let sources = ProjectTreeSources.for_phase(&request.file_root, context);
    let services = PipeServices {
        input: Mutex::new(input),
    };
    let executor = Executor {
        test: false,
        sources: sources.as_ref(),
        services: &services,
    };
    let mut broken: Option<std::io::Error> = None;
    executor.run_with(&request.plan, |k| {
        if broken.is_none()
            && let Err(e) = send(&ChildMessage::Result(Box::new(k.result.clone())))
        {
            broken = Some(e);
        }
    });
    if let Some(e) = broken {
        return Err(ConfineError::Child(format!(
            "cannot report to the agent: {e}"
        )));
    }
    let clean = subreaper && stop_descendants(LEFTOVER_GRACE);
    send(&ChildMessage::Done { landlock, clean })
        .map_err(|e| ConfineError::Child(format!("cannot report to the agent: {e}")))
}

/// This process's children (of every thread), zombies included; `None` when the kernel does
/// not list them (`/proc/<pid>/task/<tid>/children` needs CONFIG_PROC_CHILDREN).
fn own_children() -> Option<Vec<i32>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).ok()?;
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    Some(out)
}

/// Reaps children that have exited; returns the ones still running.
fn live_children() -> Option<Vec<i32>> {
    loop {
        // SAFETY: waitpid with a null status pointer writes nothing.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
    }
    own_children()
}

/// Stops every process the phase left (TERM, `grace`, then KILL, until none is left: a
/// killed child's own children are reparented here in turn). Returns whether none is left.
fn stop_descendants(grace: Duration) -> bool {
    let signal = |pids: &[i32], sig| {
        for &pid in pids {
            // SAFETY: kill touches no memory; a pid gone meanwhile fails with ESRCH.
            unsafe { libc::kill(pid, sig) };
        }
    };
    let Some(first) = live_children() else {
        return false;
    };
    if first.is_empty() {
        return true;
    }
    signal(&first, libc::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    let mut sig = libc::SIGTERM;
    for _ in 0..500 {
        let Some(left) = live_children() else {
            return false;
        };
        if left.is_empty() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            sig = libc::SIGKILL;
        }
        signal(&left, sig);
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A `pre_exec` hook for a child of the agent: its own session (so what it starts, even in
/// process groups of their own, can be found and stopped), and SIGKILL when the agent dies. It
/// runs only async-signal-safe syscalls, as a hook between fork and exec must.
pub fn own_session_dying_with_agent() -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static
{
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    move || {
        // SAFETY: setsid, prctl and getppid are async-signal-safe and take no pointers.
        unsafe {
            if libc::setsid() < 0
                || libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The agent died between fork and prctl: the death signal would never come.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the agent is gone"));
            }
        }
        Ok(())
    }
}
