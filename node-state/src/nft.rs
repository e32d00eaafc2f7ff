//! Reading and changing nftables through `nft`: a change is one `nft -f -`
//! script, which nft applies as one transaction (all of it or nothing),
//! passed on stdin, never through a shell.

use crate::iptables::{run, IptablesError};

/// `nft list table FAMILY NAME` as nft prints it; `None` when the table
/// does not exist.
pub fn list_table(family: &str, name: &str) -> Result<Option<String>, IptablesError> {
    match run("nft", &["list", "table", family, name], None) {
        Ok(text) => Ok(Some(text)),
        // nft's words for a table that is not there.
        Err(IptablesError::Failed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Applies `script` (nft's own syntax) as one transaction.
pub fn apply(script: &str) -> Result<(), IptablesError> {
    run("nft", &["-f", "-"], Some(script)).map(|_| ())
}

/// The script that removes table `FAMILY NAME` whether or not it exists
/// (adding an existing table is a no-op, so the delete never fails).
pub fn remove_table_script(family: &str, name: &str) -> String {
    format!("add table {family} {name}\ndelete table {family} {name}\n")
}
