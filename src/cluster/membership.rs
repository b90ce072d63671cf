//! Who is in the cluster: node names, o2cb node numbers and addresses.
//!
//! Names become configfs directory names (we use the Kubernetes node name),
//! numbers index the kernel's node table (0 to 254) and the heartbeat slots
//! on disk, and addresses are where o2net connects.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use futures::future::BoxFuture;

use super::config::validate_port;

/// o2nm has 255 node slots (O2NM_MAX_NODES); numbers are 0 to 254.
pub const MAX_NODE_NUMBER: u8 = 254;
/// o2nm refuses longer node names (O2NM_MAX_NAME_LEN).
pub const MAX_NAME_LEN: usize = 64;

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub number: u8,
    pub address: Ipv4Addr,
    pub port: u16,
}

impl Member {
    pub fn validate(&self) -> Result<(), String> {
        validate_node_name(&self.name)?;
        if self.number > MAX_NODE_NUMBER {
            return Err(format!(
                "node number {} must be 0 to {MAX_NODE_NUMBER}",
                self.number
            ));
        }
        // configfs takes it, but no peer can connect there, and an unset
        // address reads back as 0.0.0.0.
        if self.address.is_unspecified() {
            return Err(format!(
                "node {}: address 0.0.0.0 is not reachable",
                self.name
            ));
        }
        validate_port(self.port)
    }

    /// "number 3 at 10.0.0.1:7777", for messages.
    pub fn describe(&self) -> String {
        describe(self.number, self.address, self.port)
    }
}

pub(super) fn describe(number: u8, address: Ipv4Addr, port: u16) -> String {
    format!("number {number} at {address}:{port}")
}

/// 1 to 64 of `[A-Za-z0-9._-]`, not starting with '.': the name becomes a
/// directory under configfs, so "", "..", '/' and hidden names are out.
pub fn validate_node_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "node name {name:?} must be 1 to {MAX_NAME_LEN} characters long"
        ));
    }
    if !name.chars().all(allowed) || name.starts_with('.') {
        return Err(format!(
            "node name {name:?} may only hold letters, digits, '.', '_' and '-', \
             and must not start with '.'"
        ));
    }
    Ok(())
}

/// Why a member list is unusable, and which member (by index) broke it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberProblem {
    pub index: usize,
    pub message: String,
}

/// Every member valid, and names, numbers and addresses unique. Addresses
/// must be unique without the port: the kernel keys its peers by IPv4
/// address alone and refuses a second node at the same address.
pub fn validate_members(members: &[Member]) -> Result<(), MemberProblem> {
    let mut names = HashMap::new();
    let mut numbers = HashMap::new();
    let mut addresses = HashMap::new();
    for (index, m) in members.iter().enumerate() {
        let problem = |message| MemberProblem { index, message };
        m.validate().map_err(problem)?;
        if names.insert(m.name.as_str(), index).is_some() {
            return Err(problem(format!("node name {} appears twice", m.name)));
        }
        if let Some(other) = numbers.insert(m.number, index) {
            let other = &members[other].name;
            return Err(problem(format!(
                "node {} has number {}, already taken by node {other}",
                m.name, m.number
            )));
        }
        if let Some(other) = addresses.insert(m.address, index) {
            let other = &members[other].name;
            return Err(problem(format!(
                "node {} has address {}, already taken by node {other} \
                 (o2cb tells nodes apart by address alone)",
                m.name, m.address
            )));
        }
    }
    Ok(())
}

/// A problem on one line of a membership file (lines count from 1).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// Parses `NAME NUMBER ADDRESS[:PORT]` lines; `#` starts a comment and
/// blank lines are skipped. Duplicates are reported on their second line.
pub fn parse_members(text: &str, default_port: u16) -> Result<Vec<Member>, LineError> {
    let mut members = Vec::new();
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let member = parse_line(line, default_port).map_err(|message| LineError {
            line: i + 1,
            message,
        })?;
        if let Some(m) = member {
            members.push(m);
            lines.push(i + 1);
        }
    }
    validate_members(&members).map_err(|p| LineError {
        line: lines[p.index],
        message: p.message,
    })?;
    Ok(members)
}

fn parse_line(line: &str, default_port: u16) -> Result<Option<Member>, String> {
    let content = line.split('#').next().unwrap_or_default();
    let fields: Vec<&str> = content.split_whitespace().collect();
    let [name, number, endpoint] = fields[..] else {
        if fields.is_empty() {
            return Ok(None);
        }
        return Err(format!(
            "expected NAME NUMBER ADDRESS[:PORT], found {} fields",
            fields.len()
        ));
    };
    let number = number
        .parse::<u8>()
        .ok()
        .filter(|&n| n <= MAX_NODE_NUMBER)
        .ok_or_else(|| format!("node number {number:?} must be 0 to {MAX_NODE_NUMBER}"))?;
    let (address, port) = if endpoint.contains(':') {
        let socket: SocketAddrV4 = endpoint
            .parse()
            .map_err(|_| format!("{endpoint:?} is not an IPv4 ADDRESS:PORT"))?;
        (*socket.ip(), socket.port())
    } else {
        let address = endpoint
            .parse()
            .map_err(|_| format!("{endpoint:?} is not an IPv4 address"))?;
        (address, default_port)
    };
    let member = Member {
        name: name.to_string(),
        number,
        address,
        port,
    };
    member.validate()?;
    Ok(Some(member))
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("reading membership file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("membership file {path}, line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("this node ({node}) is not in {path}")]
    NotListed { node: String, path: PathBuf },
    /// Another source (the Kubernetes API) failed.
    #[error("membership source: {0}")]
    Source(String),
}

/// Where the member list comes from: the static file or the Kubernetes API
/// (`KubeMembers`, in the k8s module above this one).
pub trait MembershipSource: Send + Sync {
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, MembershipError>>;
}

/// Members listed in a text file (typically a mounted ConfigMap), re-read on
/// every call so edits are picked up.
#[derive(Clone, Debug)]
pub struct StaticMembers {
    pub path: PathBuf,
    pub default_port: u16,
}

impl StaticMembers {
    pub fn new(path: impl Into<PathBuf>, default_port: u16) -> StaticMembers {
        StaticMembers {
            path: path.into(),
            default_port,
        }
    }

    /// The number the file gives `node`: without one there is nothing to
    /// join.
    pub async fn number_of(&self, node: &str) -> Result<u8, MembershipError> {
        self.members()
            .await?
            .into_iter()
            .find(|m| m.name == node)
            .map(|m| m.number)
            .ok_or_else(|| MembershipError::NotListed {
                node: node.to_string(),
                path: self.path.clone(),
            })
    }
}

impl MembershipSource for StaticMembers {
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, MembershipError>> {
        Box::pin(async move {
            let text = tokio::fs::read_to_string(&self.path)
                .await
                .map_err(|source| MembershipError::Read {
                    path: self.path.clone(),
                    source,
                })?;
            parse_members(&text, self.default_port).map_err(|e| MembershipError::Line {
                path: self.path.clone(),
                line: e.line,
                message: e.message,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, number: u8, address: [u8; 4], port: u16) -> Member {
        Member {
            name: name.into(),
            number,
            address: address.into(),
            port,
        }
    }

    #[test]
    fn parses_names_numbers_addresses_and_comments() {
        let text = "# name number address\n\
                    \n\
                    node-a 0 10.0.0.1\n\
                    \tnode_b.x   1   10.0.0.2:7000   # own port\n\
                    node-c 254 10.0.0.3 #\n";
        assert_eq!(
            parse_members(text, 7777).unwrap(),
            vec![
                member("node-a", 0, [10, 0, 0, 1], 7777),
                member("node_b.x", 1, [10, 0, 0, 2], 7000),
                member("node-c", 254, [10, 0, 0, 3], 7777),
            ]
        );
        assert_eq!(parse_members("# nobody\n\n", 7777).unwrap(), vec![]);
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        let cases = [
            ("a 0 10.0.0.1\nb 1\n", 2, "found 2 fields"),
            ("a 0 10.0.0.1 extra\n", 1, "found 4 fields"),
            ("\n\na 255 10.0.0.1\n", 3, "0 to 254"),
            ("a -1 10.0.0.1\n", 1, "0 to 254"),
            ("a 0 10.0.0\n", 1, "not an IPv4 address"),
            ("a 0 10.0.0.1:x\n", 1, "ADDRESS:PORT"),
            ("a 0 10.0.0.1:0\n", 1, "port 0"),
            ("a 0 0.0.0.0\n", 1, "not reachable"),
            ("../x 0 10.0.0.1\n", 1, "node name"),
            (".hidden 0 10.0.0.1\n", 1, "must not start with '.'"),
            ("a/b 0 10.0.0.1\n", 1, "node name"),
        ];
        for (text, line, want) in cases {
            let err = parse_members(text, 7777).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.message.contains(want), "{text:?}: {err}");
        }
        let long = format!("{} 0 10.0.0.1\n", "n".repeat(65));
        assert!(parse_members(&long, 7777).is_err());
        let max = format!("{} 0 10.0.0.1\n", "n".repeat(64));
        assert!(parse_members(&max, 7777).is_ok());
    }

    #[test]
    fn duplicates_are_refused_on_their_second_line() {
        let cases = [
            ("a 0 10.0.0.1\n# x\na 1 10.0.0.2\n", 3, "appears twice"),
            ("a 0 10.0.0.1\nb 0 10.0.0.2\n", 2, "already taken by node a"),
            // Same address, other port: the kernel still refuses it.
            ("a 0 10.0.0.1\nb 1 10.0.0.1:7000\n", 2, "address 10.0.0.1"),
        ];
        for (text, line, want) in cases {
            let err = parse_members(text, 7777).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.message.contains(want), "{text:?}: {err}");
        }
    }

    #[tokio::test]
    async fn static_members_name_the_file_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members");
        std::fs::write(&path, "a 0 10.0.0.1\nb 1 10.0.0.2:9000\n").unwrap();
        let source = StaticMembers::new(&path, 7000);
        let members = source.members().await.unwrap();
        assert_eq!(members[0].port, 7000);
        assert_eq!(members[1].port, 9000);
        std::fs::write(&path, "a 0 10.0.0.1\nb 0 10.0.0.2\n").unwrap();
        let err = source.members().await.unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("line 2"),
            "{err}"
        );
        let missing = StaticMembers::new(dir.path().join("none"), 7777);
        assert!(matches!(
            missing.members().await,
            Err(MembershipError::Read { .. })
        ));
    }
}
