//! A function as a container: the image and the pod-template fields an Emergency Instance takes
//! from it, and how they combine with the image's own config into the process to run.
//!
//! The rules are Kubernetes' (`command` replaces the image's Entrypoint and drops its Cmd;
//! `args` alone replaces Cmd; the spec's `env` overrides the image's), so an EI started from a
//! function's Deployment runs exactly what its pods run.

/// Label on every container a Wavelet creates: which Wavelet owns it (so a restarted one finds
/// what its predecessor left). Containers also carry [`crate::spec::FUNCTION_LABEL`].
pub const OWNER_LABEL: &str = "wavelink.dev/owner";

/// What a function's instances run when they are containers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerTemplate {
    /// Image reference, as the pod spec gives it (`docker.io/library/python:3.12`, `app:v1`).
    pub image: String,
    /// Replaces the image's Entrypoint (and drops its Cmd) when not empty.
    pub command: Vec<String>,
    /// Replaces the image's Cmd when not empty.
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    /// `securityContext.runAsUser` / `runAsGroup`; the image's `User` otherwise.
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    /// `resources.limits.memory`, in bytes.
    pub memory_limit: Option<u64>,
    /// `resources.limits.cpu`, in thousandths of a core.
    pub cpu_limit_millis: Option<u64>,
}

/// The parts of an image's config (`config` of the OCI image configuration) a container uses.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

/// The process a container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    /// `NAME=VALUE`, image first, then the function's, then the platform's; later wins.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("image {image} has no entrypoint or command, and the function gives none")]
    NoCommand { image: String },
    #[error("image {image}: user {user:?} is not numeric (uid[:gid]); set runAsUser on the function")]
    NamedUser { image: String, user: String },
}

/// Combines template, image config and the platform's variables (`PORT`, instance id) into the
/// process to run, with Kubernetes' precedence.
pub fn plan_process(
    template: &ContainerTemplate,
    image: &ImageConfig,
    env: &[(String, String)],
    platform_env: &[(&str, String)],
) -> Result<ProcessPlan, PlanError> {
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    let args: Vec<String> = match (template.command.is_empty(), template.args.is_empty()) {
        (false, _) => template.command.iter().chain(&template.args).cloned().collect(),
        (true, false) => entrypoint.into_iter().chain(template.args.iter().cloned()).collect(),
        (true, true) => entrypoint.into_iter().chain(cmd).collect(),
    };
    if args.is_empty() {
        return Err(PlanError::NoCommand { image: template.image.clone() });
    }

    let mut merged: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: String| match merged.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value,
        None => merged.push((name.to_owned(), value)),
    };
    set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    for line in image.env.iter().flatten() {
        if let Some((name, value)) = line.split_once('=') {
            set(name, value.to_owned());
        }
    }
    for (name, value) in env {
        set(name, value.clone());
    }
    for (name, value) in platform_env {
        set(name, value.clone());
    }

    let (mut uid, mut gid) = (0, 0);
    if let Some(user) = image.user.as_deref().filter(|u| !u.is_empty()) {
        let numeric = |s: &str| s.parse::<u32>().ok();
        let (u, g) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
        match (numeric(u), g.map(numeric)) {
            (Some(u), None) => uid = u,
            (Some(u), Some(Some(g))) => (uid, gid) = (u, g),
            _ if template.run_as_user.is_some() => {}
            _ => return Err(PlanError::NamedUser { image: template.image.clone(), user: user.to_owned() }),
        }
    }
    uid = template.run_as_user.unwrap_or(uid);
    gid = template.run_as_group.unwrap_or(gid);

    let cwd = template
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| "/".to_owned());
    Ok(ProcessPlan { args, env: merged.into_iter().map(|(n, v)| format!("{n}={v}")).collect(), cwd, uid, gid })
}

/// The full name containerd stores an image under, as kubelet normalises a pod's `image`:
/// `python:3.12` is `docker.io/library/python:3.12`, a name without tag gets `:latest`.
pub fn normalize_image(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_domain = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = match (has_domain, name.contains('/')) {
        (true, _) => name.to_owned(),
        (false, true) => format!("docker.io/{name}"),
        (false, false) => format!("docker.io/library/{name}"),
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if digest.is_none() && !last.contains(':') {
        full.push_str(":latest");
    }
    if let Some(digest) = digest {
        full.push('@');
        full.push_str(digest);
    }
    full
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_names_are_normalised_as_kubelet_does() {
        assert_eq!(normalize_image("python:3.12"), "docker.io/library/python:3.12");
        assert_eq!(normalize_image("python"), "docker.io/library/python:latest");
        assert_eq!(normalize_image("me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(normalize_image("localhost/wavelink-fn:0.1.0"), "localhost/wavelink-fn:0.1.0");
        assert_eq!(normalize_image("registry.k8s.io/pause"), "registry.k8s.io/pause:latest");
        assert_eq!(normalize_image("host:5000/a/b"), "host:5000/a/b:latest");
        assert_eq!(normalize_image("app@sha256:abc"), "docker.io/library/app@sha256:abc");
    }

    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(strings(&["/entry"])),
            cmd: Some(strings(&["--default"])),
            env: Some(strings(&["PATH=/image/bin", "GREETING=image", "KEEP=1"])),
            working_dir: Some("/app".into()),
            user: Some("1000:1001".into()),
        }
    }

    fn template() -> ContainerTemplate {
        ContainerTemplate { image: "app:v1".into(), ..Default::default() }
    }

    #[test]
    fn command_and_args_follow_kubernetes_precedence() {
        let plan = |t: &ContainerTemplate| plan_process(t, &image(), &[], &[]).unwrap().args;
        assert_eq!(plan(&template()), ["/entry", "--default"]);
        let args_only = ContainerTemplate { args: strings(&["--mine"]), ..template() };
        assert_eq!(plan(&args_only), ["/entry", "--mine"]);
        let command_only = ContainerTemplate { command: strings(&["/bin/app"]), ..template() };
        assert_eq!(plan(&command_only), ["/bin/app"], "command drops the image's Cmd");
        let both = ContainerTemplate { command: strings(&["/bin/app"]), args: strings(&["-v"]), ..template() };
        assert_eq!(plan(&both), ["/bin/app", "-v"]);
        let bare = ImageConfig::default();
        assert_eq!(plan_process(&template(), &bare, &[], &[]), Err(PlanError::NoCommand { image: "app:v1".into() }));
    }

    #[test]
    fn function_env_overrides_the_image_and_the_platform_overrides_both() {
        let env = [("GREETING".to_owned(), "spec".to_owned()), ("PORT".to_owned(), "1".to_owned())];
        let plan = plan_process(&template(), &image(), &env, &[("PORT", "8080".into())]).unwrap();
        assert_eq!(plan.env, strings(&["PATH=/image/bin", "GREETING=spec", "KEEP=1", "PORT=8080"]));
    }

    #[test]
    fn user_and_directory_come_from_the_image_unless_the_spec_says() {
        let plan = plan_process(&template(), &image(), &[], &[]).unwrap();
        assert_eq!((plan.uid, plan.gid, plan.cwd.as_str()), (1000, 1001, "/app"));
        let spec = ContainerTemplate {
            run_as_user: Some(65534),
            run_as_group: Some(65534),
            working_dir: Some("/srv".into()),
            ..template()
        };
        let plan = plan_process(&spec, &image(), &[], &[]).unwrap();
        assert_eq!((plan.uid, plan.gid, plan.cwd.as_str()), (65534, 65534, "/srv"));
        let root = ImageConfig { user: None, working_dir: None, ..image() };
        let plan = plan_process(&template(), &root, &[], &[]).unwrap();
        assert_eq!((plan.uid, plan.gid, plan.cwd.as_str()), (0, 0, "/"));
        let named = ImageConfig { user: Some("app".into()), ..image() };
        assert!(matches!(plan_process(&template(), &named, &[], &[]), Err(PlanError::NamedUser { .. })));
        let named_overridden = ContainerTemplate { run_as_user: Some(7), ..template() };
        assert_eq!(plan_process(&named_overridden, &named, &[], &[]).unwrap().uid, 7);
    }
}
