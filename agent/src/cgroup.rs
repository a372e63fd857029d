//! The cgroup v2 hierarchy: where it is mounted and how a workload's cgroup is found.
use std::{
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

/// The mount point of the cgroup v2 hierarchy: `/sys/fs/cgroup` on pure v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn detect_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(target))
    })
}

pub fn is_cgroup2(path: &Path) -> bool {
    detect_all_roots().iter().any(|root| root == path)
}

fn detect_all_roots() -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return Vec::new();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 2 && fields[2] == "cgroup2").then(|| PathBuf::from(fields[1]))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup path {0:?} must be relative to the cgroup v2 root, without '..'")]
    InvalidPath(String),
    #[error("cgroup path {0:?} names the cgroup v2 root itself; STOA never attaches there")]
    Root(String),
    #[error("cgroup {path} does not exist: {source}")]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
}

/// A workload's cgroup, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedCgroup {
    pub path: PathBuf,
    /// The cgroup v2 id (`bpf_get_current_cgroup_id`), which is the directory's inode.
    pub id: u64,
}

pub fn resolve(root: &Path, relative: &str) -> Result<ResolvedCgroup, CgroupError> {
    let rel = Path::new(relative);
    let normal_only = rel
        .components()
        .all(|component| matches!(component, Component::Normal(_) | Component::CurDir));
    if relative.is_empty() || !normal_only {
        if relative.trim_matches('/').is_empty() {
            return Err(CgroupError::Root(relative.to_string()));
        }
        return Err(CgroupError::InvalidPath(relative.to_string()));
    }
    if rel.components().all(|c| matches!(c, Component::CurDir)) {
        return Err(CgroupError::Root(relative.to_string()));
    }
    let path = root.join(rel);
    let meta = std::fs::metadata(&path).map_err(|source| CgroupError::Missing {
        path: path.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(CgroupError::NotADirectory(path));
    }
    Ok(ResolvedCgroup {
        id: meta.ino(),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_paths_that_escape_or_name_the_root() {
        let root = std::env::temp_dir();
        assert!(matches!(resolve(&root, ""), Err(CgroupError::Root(_))));
        assert!(matches!(resolve(&root, "/"), Err(CgroupError::Root(_))));
        assert!(matches!(resolve(&root, "."), Err(CgroupError::Root(_))));
        assert!(matches!(
            resolve(&root, "a/../../etc"),
            Err(CgroupError::InvalidPath(_))
        ));
        assert!(matches!(
            resolve(&root, "/abs"),
            Err(CgroupError::InvalidPath(_))
        ));
    }

    #[test]
    fn resolves_a_directory_to_its_inode() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("pod")).unwrap();
        let resolved = resolve(root.path(), "pod").unwrap();
        assert_eq!(
            resolved.id,
            std::fs::metadata(root.path().join("pod")).unwrap().ino()
        );
        assert!(matches!(
            resolve(root.path(), "missing"),
            Err(CgroupError::Missing { .. })
        ));
    }
}
