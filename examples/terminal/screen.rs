//! The terminal: a prompt line that stays at the bottom while events print above it, and a
//! keyboard read one key at a time, so that typing can be announced before Enter.
//!
//! On a terminal, stdin is switched to non-canonical mode without echo for as long as the
//! [`Keyboard`] lives (the previous mode is restored when it is dropped, also on an error);
//! the line being typed is kept here and redrawn under every printed line. Ctrl-C and Ctrl-D
//! (on an empty line) quit cleanly instead of killing the process. Anywhere else (a pipe, a
//! file) lines are read whole and nothing is redrawn.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use std::io::{BufRead as _, Read as _};

use tokio::sync::mpsc;

/// What the keyboard did.
pub(crate) enum Input {
    /// The line being typed changed; `composing` when it now holds a message (not empty, not
    /// a `/command`).
    Edited {
        /// Whether a message is being written.
        composing: bool,
    },
    /// Enter: the finished line.
    Line(String),
    /// Ctrl-C, Ctrl-D on an empty line, or the end of the input.
    Quit,
}

/// Where output goes; cheap to clone and usable from any task.
#[derive(Clone)]
pub(crate) struct Screen(Arc<Mutex<State>>);

struct State {
    /// Keys are read one at a time and the prompt line is drawn by us.
    interactive: bool,
    prompt: String,
    line: String,
}

impl Screen {
    /// Prints `text` (one or more lines) above the prompt line.
    pub(crate) fn print(&self, text: impl AsRef<str>) {
        let Ok(state) = self.0.lock() else { return };
        let mut out = std::io::stdout().lock();
        if state.interactive {
            // Clear the prompt line, print, and draw it again below.
            let _ = write!(
                out,
                "\r\x1b[2K{}\n{}{}",
                text.as_ref(),
                state.prompt,
                state.line
            );
        } else {
            let _ = writeln!(out, "{}", text.as_ref());
        }
        let _ = out.flush();
    }

    /// Whether keys are read one at a time (a terminal), so the prompt line is ours.
    pub(crate) fn is_interactive(&self) -> bool {
        self.0.lock().is_ok_and(|s| s.interactive)
    }

    /// Replaces the prompt (what precedes the line being typed).
    pub(crate) fn set_prompt(&self, prompt: String) {
        let Ok(mut state) = self.0.lock() else { return };
        if state.prompt != prompt {
            state.prompt = prompt;
            redraw(&state);
        }
    }
}

/// Draws the prompt line again.
fn redraw(state: &State) {
    if !state.interactive {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "\r\x1b[2K{}{}", state.prompt, state.line);
    let _ = out.flush();
}

/// The keyboard. While it lives, stdin is in the mode it set; dropping it restores the
/// terminal.
pub(crate) struct Keyboard {
    #[cfg(unix)]
    restore: Option<rustix::termios::Termios>,
}

impl Drop for Keyboard {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = &self.restore {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
            // End on a fresh line.
            println!();
        }
    }
}

/// Takes over the terminal: returns the screen, the keyboard guard and its inputs.
pub(crate) fn start() -> (Screen, Keyboard, mpsc::UnboundedReceiver<Input>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let keyboard = Keyboard {
        #[cfg(unix)]
        restore: raw_mode(),
    };
    #[cfg(unix)]
    let interactive = keyboard.restore.is_some();
    #[cfg(not(unix))]
    let interactive = false;
    let screen = Screen(Arc::new(Mutex::new(State {
        interactive,
        prompt: String::new(),
        line: String::new(),
    })));
    // A thread of its own, not tokio's stdin: a read blocked on the keyboard would keep the
    // runtime from shutting down after `/quit`.
    let reader = screen.clone();
    std::thread::spawn(move || {
        if interactive {
            keys(&reader, &tx);
        } else {
            lines(&tx);
        }
    });
    (screen, keyboard, rx)
}

/// Switches stdin to one key at a time without echo; the previous mode, or `None` when
/// stdin is not a terminal.
#[cfg(unix)]
fn raw_mode() -> Option<rustix::termios::Termios> {
    use rustix::termios::{InputModes, LocalModes, OptionalActions, SpecialCodeIndex};

    let stdin = std::io::stdin();
    let saved = rustix::termios::tcgetattr(&stdin).ok()?;
    let mut raw = saved.clone();
    raw.local_modes
        .remove(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG | LocalModes::IEXTEN);
    raw.input_modes.remove(InputModes::ICRNL | InputModes::IXON);
    raw.special_codes[SpecialCodeIndex::VMIN] = 1;
    raw.special_codes[SpecialCodeIndex::VTIME] = 0;
    rustix::termios::tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
    Some(saved)
}

/// Reads whole lines (stdin is not a terminal).
fn lines(tx: &mpsc::UnboundedSender<Input>) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if tx.send(Input::Line(line)).is_err() {
            return;
        }
    }
    let _ = tx.send(Input::Quit);
}

/// Reads keys, edits the line and draws it.
fn keys(screen: &Screen, tx: &mpsc::UnboundedSender<Input>) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 256];
    // Bytes of a UTF-8 character not complete yet, and where in an escape sequence we are.
    let mut partial: Vec<u8> = Vec::new();
    let mut escape = Escape::None;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send(Input::Quit);
                return;
            }
            Ok(n) => n,
        };
        for &byte in buf.get(..n).unwrap_or_default() {
            let input = {
                let Ok(mut state) = screen.0.lock() else {
                    return;
                };
                let input = key(&mut state, &mut partial, &mut escape, byte);
                redraw(&state);
                input
            };
            if let Some(input) = input {
                let quit = matches!(input, Input::Quit);
                if tx.send(input).is_err() || quit {
                    return;
                }
            }
        }
    }
}

/// Where in a terminal escape sequence (arrow keys and the like, which are ignored) we are.
#[derive(Clone, Copy)]
enum Escape {
    None,
    /// After ESC.
    Started,
    /// After ESC [ or ESC O, until the final byte.
    Sequence,
}

/// Applies one byte to the line being typed.
fn key(state: &mut State, partial: &mut Vec<u8>, escape: &mut Escape, byte: u8) -> Option<Input> {
    match *escape {
        Escape::Started => {
            *escape = if matches!(byte, b'[' | b'O') {
                Escape::Sequence
            } else {
                Escape::None
            };
            return None;
        }
        Escape::Sequence => {
            if (0x40..=0x7e).contains(&byte) {
                *escape = Escape::None;
            }
            return None;
        }
        Escape::None => {}
    }
    let edited = |state: &State| Input::Edited {
        composing: !state.line.trim().is_empty() && !state.line.starts_with('/'),
    };
    match byte {
        // Ctrl-C.
        0x03 => Some(Input::Quit),
        // Ctrl-D quits on an empty line.
        0x04 if state.line.is_empty() => Some(Input::Quit),
        b'\r' | b'\n' => {
            let line = std::mem::take(&mut state.line);
            // Keep what was typed on screen, as a terminal does.
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K{}{line}\n", state.prompt);
            Some(Input::Line(line))
        }
        // Backspace (DEL or Ctrl-H).
        0x7f | 0x08 => {
            partial.clear();
            state.line.pop().map(|_| edited(state))
        }
        // Ctrl-U: clear the line.
        0x15 => {
            state.line.clear();
            Some(edited(state))
        }
        0x1b => {
            *escape = Escape::Started;
            None
        }
        byte if byte < 0x20 => None,
        byte => {
            partial.push(byte);
            match std::str::from_utf8(partial) {
                Ok(s) => {
                    state.line.push_str(s);
                    partial.clear();
                    Some(edited(state))
                }
                // Incomplete: wait for the rest of the character.
                Err(e) if e.error_len().is_none() && partial.len() < 4 => None,
                Err(_) => {
                    partial.clear();
                    None
                }
            }
        }
    }
}

/// Asks for a password without echoing it (on a terminal); `None` at the end of input.
pub(crate) fn read_password(prompt: &str) -> std::io::Result<Option<String>> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    #[cfg(unix)]
    let saved = {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
            rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet)?;
        }
        saved
    };
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    #[cfg(unix)]
    if let Some(saved) = saved {
        rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &saved,
        )?;
        eprintln!();
    }
    if read? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
}
