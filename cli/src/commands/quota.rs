//! `corpus trim|enlarge ENDPOINT ENV_UUID PROJECT SIZE`: shrinks or grows a project's storage
//! quota (default 5 GB). SIZE like `500M`, `2G`, `1.5 GiB`.

use corpus_proto::SetQuotaRequest;

use crate::session::{Session, rpc_error};

pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let size: bytesize::ByteSize = text.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "size {} is invalid: use e.g. 500M, 2G, 1.5GiB",
            corpus_proto::names::quote_input(text)
        )
    })?;
    if size.as_u64() == 0 {
        anyhow::bail!("size {} is zero", corpus_proto::names::quote_input(text));
    }
    Ok(size.as_u64())
}

pub async fn run(
    mut session: Session,
    env: &str,
    project: &str,
    size: &str,
    enlarge: bool,
    json: bool,
) -> anyhow::Result<()> {
    let bytes = i64::try_from(parse_size(size)?)
        .map_err(|_| anyhow::anyhow!("size {size:?} is too large"))?;
    let quota = session
        .client
        .set_quota(SetQuotaRequest {
            env_uuid: env.to_owned(),
            project: project.to_owned(),
            delta_bytes: if enlarge { bytes } else { -bytes },
        })
        .await
        .map_err(|s| rpc_error(&session.endpoint, s))?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::json!({"project": quota.project, "quota_bytes": quota.quota_bytes, "used_bytes": quota.used_bytes})
        );
    } else {
        println!(
            "project {} quota: {} ({} used)",
            quota.project,
            bytesize::ByteSize(quota.quota_bytes),
            bytesize::ByteSize(quota.used_bytes)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_refuse_nonsense() -> anyhow::Result<()> {
        assert_eq!(parse_size("2G")?, 2_000_000_000);
        assert_eq!(parse_size("1 GiB")?, 1 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        Ok(())
    }
}
