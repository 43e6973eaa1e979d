//! Definition files: TOML text <-> `VmDefinition`, and the `edit` loop.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use ironvirt_api_types::VmDefinition;
use ironvirt_client::{Client, ErrorKind};

/// A definition file that does not parse into a `VmDefinition` (exit code 6).
#[derive(Debug)]
pub struct InvalidDefinitionFile {
    /// Where the text came from.
    pub origin: String,
    /// `line:column: message`.
    pub message: String,
}

impl std::fmt::Display for InvalidDefinitionFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.origin, self.message)
    }
}

impl std::error::Error for InvalidDefinitionFile {}

/// The user gave up editing after an error (already printed); the file was kept.
#[derive(Debug)]
pub struct Abandoned {
    /// The kept file.
    pub path: PathBuf,
    /// The exit code of the error that made the user give up.
    pub exit_code: u8,
}

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Edit abandoned; your edits are kept in {}", self.path.display())
    }
}

impl std::error::Error for Abandoned {}

/// The TOML form `dump` prints; `parse` of it gives back the same definition.
pub fn to_toml(definition: &VmDefinition) -> String {
    toml::to_string(definition).expect("a VmDefinition always serialises to TOML")
}

/// Parses TOML, reporting errors on one line with their position.
pub fn parse(text: &str, origin: &str) -> Result<VmDefinition, InvalidDefinitionFile> {
    toml::from_str(text).map_err(|e| {
        let position = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("{line}:{column}: ")
            })
            .unwrap_or_else(|| " ".to_owned());
        InvalidDefinitionFile {
            origin: origin.to_owned(),
            message: format!("{position}{}", e.message().trim().replace('\n', " ")),
        }
    })
}

/// Reads and parses a definition file.
pub fn read_file(path: &Path) -> Result<VmDefinition> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("Cannot read {}", path.display()))?;
    Ok(parse(&text, &path.display().to_string())?)
}

/// The editor command: `$VISUAL`, else `$EDITOR`, else `vi`.
fn editor() -> String {
    ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "vi".to_owned())
}

/// Runs the editor on `path` through `sh`, so `EDITOR="code --wait"` works.
fn run_editor(path: &Path) -> Result<()> {
    let editor = editor();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(path)
        .status()
        .with_context(|| format!("Cannot run the editor {editor:?}"))?;
    if !status.success() {
        bail!("The editor {editor:?} failed ({status})");
    }
    Ok(())
}

/// Asks on stderr whether to edit again; reads the answer from stdin. EOF means no.
fn ask_again() -> bool {
    eprint!("Edit again? [Y/n] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let stdin = std::io::stdin();
    let read = stdin.lock().read_line(&mut answer);
    if !stdin.is_terminal() {
        // Nothing echoed the answer: end the prompt line ourselves.
        eprintln!();
    }
    match read {
        Ok(0) | Err(_) => false,
        Ok(_) => !matches!(answer.trim(), "n" | "N" | "no" | "No"),
    }
}

/// What `edit` did.
pub enum EditOutcome {
    /// The file was saved unchanged; nothing was sent.
    Unchanged,
    /// The daemon accepted the new definition.
    Updated(ironvirt_api_types::VmInfo),
}

/// `ironvirt edit NAME`: dump to a temporary file, edit, re-define with PUT. On a parse or
/// validation error, shows it and offers to edit the same file again; when the user gives
/// up, the file is kept and its path printed, so no edit is lost.
pub async fn edit(client: &Client, name: &str) -> Result<EditOutcome> {
    let original = to_toml(&client.definition(name).await?);
    let mut file = tempfile::Builder::new()
        .prefix(&format!("ironvirt-{name}-"))
        .suffix(".toml")
        .tempfile()
        .context("Cannot create a temporary file to edit")?;
    file.write_all(original.as_bytes())
        .and_then(|()| file.flush())
        .context("Cannot write the temporary file to edit")?;
    loop {
        if let Err(e) = run_editor(file.path()) {
            return Err(e.context(kept(file)?));
        }
        let text = std::fs::read_to_string(file.path())
            .with_context(|| format!("Cannot read back {}", file.path().display()))?;
        if text == original {
            return Ok(EditOutcome::Unchanged);
        }
        let failure: anyhow::Error = match parse(&text, &file.path().display().to_string()) {
            Err(e) => e.into(),
            Ok(definition) => match client.redefine(name, &definition).await {
                Ok(info) => return Ok(EditOutcome::Updated(info)),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::InvalidDefinition | ErrorKind::BadRequest | ErrorKind::Conflict
                    ) =>
                {
                    e.into()
                }
                Err(e) => return Err(anyhow::Error::from(e).context(kept(file)?)),
            },
        };
        eprintln!("ironvirt: error: {}", crate::one_line(&failure));
        if !ask_again() {
            let exit_code = crate::exit_code(&failure);
            let (_, path) = file.keep().context("Cannot keep the edited definition file")?;
            return Err(Abandoned { path, exit_code }.into());
        }
    }
}

/// Keeps the temporary file and returns a message naming it.
fn kept(file: tempfile::NamedTempFile) -> Result<String> {
    let (_, path): (_, PathBuf) = file.keep().context("Cannot keep the edited definition file")?;
    Ok(format!("Your edits are kept in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_file_line_and_column_on_one_line() {
        let err = parse("name = \"a\"\ncpus = \"two\"\n", "a.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("a.toml:2:8: "), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn dumped_text_parses_back_identically() {
        let text = "name = \"x\"\ncpus = 1\nmemory = \"64M\"\nautostart = false\n\n[boot]\nkernel = \"/k\"\n";
        let definition = parse(text, "t").unwrap();
        assert_eq!(parse(&to_toml(&definition), "t").unwrap(), definition);
    }
}
