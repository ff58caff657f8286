//! Skills: folders with a `SKILL.md`, read from sandstorm.json's
//! `skills_dir` when the config loads, and sent into each run's sandbox
//! in its one upload, under `/home/user/.claude/skills/<name>/`, where the
//! SDK finds them (it reads the project's settings when a run has skills).
//!
//! They are read once, at start-up, so a skill too large to upload is an
//! error then, not in the middle of a run.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;

use crate::request::MAX_FILES_BYTES;

/// Where skills are looked for when sandstorm.json names no `skills_dir`:
/// beside it, as Claude Code keeps them.
pub(crate) const DEFAULT_DIR: &str = ".claude/skills";
/// The most files all skills together may have.
pub(crate) const MAX_FILES: usize = 200;
/// The most bytes all skills together may have: the request's own upload
/// limit.
pub(crate) const MAX_BYTES: usize = MAX_FILES_BYTES;

/// A skill's files, by path relative to its folder.
pub type SkillFiles = BTreeMap<String, Bytes>;

/// Skills by name.
pub type Skills = BTreeMap<String, SkillFiles>;

/// A skill's name: what `allowed_skills` and the SDK call it, and its
/// folder's name in the sandbox.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Reads every skill under `dir`: each folder with a `SKILL.md`. Other
/// folders and loose files are left out, as the SDK would ignore them.
/// `shown` names `dir` in errors.
pub(crate) fn load(dir: &Path, shown: &str) -> Result<Skills, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut skills = Skills::new();
    let mut count = 0;
    let mut bytes = 0;
    let mut folders: Vec<_> = entries
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    folders.sort_by_key(std::fs::DirEntry::file_name);
    for entry in folders {
        let path = entry.path();
        if !path.is_dir() || !path.join("SKILL.md").is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if !valid_name(&name) {
            return Err(format!(
                "{shown}/{name}: a skill's folder name must be 1 to 64 letters, digits, \
                 '-' or '_'"
            ));
        }
        let mut files = SkillFiles::new();
        read_folder(&path, "", &format!("{shown}/{name}"), &mut files)?;
        count += files.len();
        bytes += files.values().map(Bytes::len).sum::<usize>();
        if count > MAX_FILES {
            return Err(format!(
                "{shown}: skills have more than {MAX_FILES} files, the most one run uploads"
            ));
        }
        if bytes > MAX_BYTES {
            return Err(format!(
                "{shown}: skills total more than {MAX_BYTES} bytes, the most one run uploads \
                 (at {shown}/{name})"
            ));
        }
        skills.insert(name, files);
    }
    Ok(skills)
}

/// Reads `folder`'s files into `files`, by path under `prefix`. A link is
/// refused rather than followed: it could point anywhere on this host,
/// and the skill is sent into every sandbox.
fn read_folder(
    folder: &Path,
    prefix: &str,
    shown: &str,
    files: &mut SkillFiles,
) -> Result<(), String> {
    let entries = std::fs::read_dir(folder).map_err(|e| format!("cannot read {shown}: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {shown}: {e}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Finder's litter, as Python Sandstorm skips it.
        if name == ".DS_Store" {
            continue;
        }
        let relative = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot read {shown}/{name}: {e}"))?;
        if kind.is_symlink() {
            return Err(format!(
                "{shown}/{name} is a symbolic link; a skill's files must be in its folder"
            ));
        }
        if kind.is_dir() {
            read_folder(&entry.path(), &relative, &format!("{shown}/{name}"), files)?;
        } else if kind.is_file() {
            let content = std::fs::read(entry.path())
                .map_err(|e| format!("cannot read {shown}/{name}: {e}"))?;
            if content.len() > MAX_BYTES {
                return Err(format!(
                    "{shown}/{name} is larger than {MAX_BYTES} bytes, the most one run uploads"
                ));
            }
            files.insert(relative, Bytes::from(content));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, content: &str) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write");
    }

    #[test]
    fn folders_with_a_skill_md_are_skills_with_all_their_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(&dir.path().join("owasp/SKILL.md"), "# OWASP");
        write(&dir.path().join("owasp/refs/a01.md"), "A01");
        write(&dir.path().join("owasp/.DS_Store"), "x");
        write(&dir.path().join("notes/README.md"), "not a skill");
        write(&dir.path().join("loose.md"), "not a skill either");
        let skills = load(dir.path(), ".claude/skills").expect("loads");
        assert_eq!(skills.keys().collect::<Vec<_>>(), ["owasp"]);
        assert_eq!(
            skills["owasp"].keys().collect::<Vec<_>>(),
            ["SKILL.md", "refs/a01.md"]
        );
        assert_eq!(skills["owasp"]["refs/a01.md"], "A01");
    }

    #[test]
    fn too_many_bytes_a_bad_name_or_a_link_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(&dir.path().join("big/SKILL.md"), "# Big");
        std::fs::write(dir.path().join("big/blob.bin"), vec![b'x'; MAX_BYTES + 1]).expect("write");
        let error = load(dir.path(), "skills").expect_err("too big");
        assert!(error.contains("skills/big/blob.bin"), "{error}");
        assert!(error.contains(&MAX_BYTES.to_string()), "{error}");

        let dir = tempfile::tempdir().expect("tempdir");
        write(&dir.path().join("has space/SKILL.md"), "#");
        let error = load(dir.path(), "skills").expect_err("bad name");
        assert!(error.contains("has space"), "{error}");

        let dir = tempfile::tempdir().expect("tempdir");
        write(&dir.path().join("s/SKILL.md"), "#");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("s/passwd")).expect("link");
        let error = load(dir.path(), "skills").expect_err("link");
        assert!(error.contains("s/passwd is a symbolic link"), "{error}");
    }

    #[test]
    fn many_small_skills_together_hit_the_file_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..=MAX_FILES {
            write(&dir.path().join(format!("s{i}/SKILL.md")), "#");
        }
        let error = load(dir.path(), "skills").expect_err("too many");
        assert!(
            error.contains(&format!("more than {MAX_FILES} files")),
            "{error}"
        );
    }
}
