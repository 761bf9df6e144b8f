//! Azure clouds: where ARM, Graph and Entra live, and which token audiences they accept
//! (../shared/azure-facts.md §D.4). azure_core's `CloudConfiguration` carries only the authority host,
//! so keyless maps the ARM and Graph URLs itself. Every endpoint can be overridden, for private
//! endpoints and for the Azure emulator; the token scopes stay those of the cloud unless overridden
//! too, because a private endpoint still expects the cloud's audience.

use url::Url;

/// The Azure clouds keyless knows, named as `az cloud list` names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum AzureCloud {
    #[default]
    #[value(name = "AzurePublicCloud")]
    AzurePublicCloud,
    #[value(name = "AzureUSGovernment")]
    AzureUSGovernment,
    #[value(name = "AzureChinaCloud")]
    AzureChinaCloud,
}

impl AzureCloud {
    pub const fn as_str(self) -> &'static str {
        match self {
            AzureCloud::AzurePublicCloud => "AzurePublicCloud",
            AzureCloud::AzureUSGovernment => "AzureUSGovernment",
            AzureCloud::AzureChinaCloud => "AzureChinaCloud",
        }
    }

    /// ARM's base URL.
    pub const fn arm_endpoint(self) -> &'static str {
        match self {
            AzureCloud::AzurePublicCloud => "https://management.azure.com/",
            AzureCloud::AzureUSGovernment => "https://management.usgovcloudapi.net/",
            AzureCloud::AzureChinaCloud => "https://management.chinacloudapi.cn/",
        }
    }

    /// Microsoft Graph's base URL (without the `/v1.0` version segment). For US Government this is
    /// the L4/GCC High endpoint; DoD tenants override it with `https://dod-graph.microsoft.us`.
    pub const fn graph_endpoint(self) -> &'static str {
        match self {
            AzureCloud::AzurePublicCloud => "https://graph.microsoft.com/",
            AzureCloud::AzureUSGovernment => "https://graph.microsoft.us/",
            AzureCloud::AzureChinaCloud => "https://microsoftgraph.chinacloudapi.cn/",
        }
    }

    /// Entra ID's authority host, where tokens come from.
    pub const fn authority_host(self) -> &'static str {
        match self {
            AzureCloud::AzurePublicCloud => "https://login.microsoftonline.com/",
            AzureCloud::AzureUSGovernment => "https://login.microsoftonline.us/",
            AzureCloud::AzureChinaCloud => "https://login.chinacloudapi.cn/",
        }
    }

    /// The scope of an ARM token (the ARM audience + `/.default`).
    pub const fn arm_scope(self) -> &'static str {
        match self {
            AzureCloud::AzurePublicCloud => "https://management.azure.com/.default",
            AzureCloud::AzureUSGovernment => "https://management.usgovcloudapi.net/.default",
            AzureCloud::AzureChinaCloud => "https://management.chinacloudapi.cn/.default",
        }
    }

    /// The scope of a Graph token. Entra issues one token per resource, so ARM and Graph each get
    /// their own.
    pub const fn graph_scope(self) -> &'static str {
        match self {
            AzureCloud::AzurePublicCloud => "https://graph.microsoft.com/.default",
            AzureCloud::AzureUSGovernment => "https://graph.microsoft.us/.default",
            AzureCloud::AzureChinaCloud => "https://microsoftgraph.chinacloudapi.cn/.default",
        }
    }
}

impl std::fmt::Display for AzureCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Overrides for one cloud's endpoints; `None` keeps the cloud's value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointOverrides {
    pub arm_endpoint: Option<Url>,
    pub graph_endpoint: Option<Url>,
    pub authority_host: Option<Url>,
    pub arm_scope: Option<String>,
    pub graph_scope: Option<String>,
}

/// The endpoints keyless talks to, resolved from a cloud and its overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEndpoints {
    pub cloud: AzureCloud,
    /// ARM's base URL, ending in `/`; resource ids are appended to it.
    pub arm: Url,
    /// Graph's base URL, ending in `/`; `v1.0/...` is appended to it.
    pub graph: Url,
    /// Entra's authority host; azure_identity appends `/{tenant}/oauth2/v2.0/token`.
    pub authority_host: Url,
    pub arm_scope: String,
    pub graph_scope: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// Tokens travel to these endpoints, and azure_identity refuses a plain-http authority anyway.
    #[error("the {what} {url} must use https: keyless sends bearer tokens there")]
    NotHttps { what: &'static str, url: String },
    #[error("the built-in {what} of {cloud} is not a URL")]
    BuiltIn {
        what: &'static str,
        cloud: AzureCloud,
        #[source]
        source: url::ParseError,
    },
}

impl CloudEndpoints {
    pub fn resolve(
        cloud: AzureCloud,
        overrides: &EndpointOverrides,
    ) -> Result<CloudEndpoints, CloudError> {
        let builtin = |what: &'static str, value: &str| {
            Url::parse(value).map_err(|source| CloudError::BuiltIn {
                what,
                cloud,
                source,
            })
        };
        let arm = match &overrides.arm_endpoint {
            Some(url) => url.clone(),
            None => builtin("ARM endpoint", cloud.arm_endpoint())?,
        };
        let graph = match &overrides.graph_endpoint {
            Some(url) => url.clone(),
            None => builtin("Graph endpoint", cloud.graph_endpoint())?,
        };
        let authority_host = match &overrides.authority_host {
            Some(url) => url.clone(),
            None => builtin("authority host", cloud.authority_host())?,
        };
        Ok(CloudEndpoints {
            cloud,
            arm: https_base("ARM endpoint", arm)?,
            graph: https_base("Graph endpoint", graph)?,
            authority_host: https_base("authority host", authority_host)?,
            arm_scope: overrides
                .arm_scope
                .clone()
                .unwrap_or_else(|| cloud.arm_scope().to_string()),
            graph_scope: overrides
                .graph_scope
                .clone()
                .unwrap_or_else(|| cloud.graph_scope().to_string()),
        })
    }

    /// The authority host as azure_identity wants it: no trailing slash (it joins the tenant path).
    pub fn authority_host_str(&self) -> String {
        self.authority_host
            .as_str()
            .trim_end_matches('/')
            .to_string()
    }
}

// A base URL must end in '/', or `Url::join` would replace its last path segment (a path prefix
// such as an API gateway's `/arm/` would be lost).
fn https_base(what: &'static str, mut url: Url) -> Result<Url, CloudError> {
    if url.scheme() != "https" {
        return Err(CloudError::NotHttps {
            what,
            url: url.to_string(),
        });
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(cloud: AzureCloud) -> CloudEndpoints {
        CloudEndpoints::resolve(cloud, &EndpointOverrides::default()).unwrap()
    }

    #[test]
    fn the_public_cloud_maps_to_management_azure_com_graph_and_login_microsoftonline() {
        let public = resolved(AzureCloud::AzurePublicCloud);
        assert_eq!(public.arm.as_str(), "https://management.azure.com/");
        assert_eq!(public.graph.as_str(), "https://graph.microsoft.com/");
        assert_eq!(
            public.authority_host_str(),
            "https://login.microsoftonline.com"
        );
        assert_eq!(public.arm_scope, "https://management.azure.com/.default");
        assert_eq!(public.graph_scope, "https://graph.microsoft.com/.default");
    }

    #[test]
    fn us_government_maps_to_usgovcloudapi_graph_microsoft_us_and_login_microsoftonline_us() {
        let gov = resolved(AzureCloud::AzureUSGovernment);
        assert_eq!(gov.arm.as_str(), "https://management.usgovcloudapi.net/");
        assert_eq!(gov.graph.as_str(), "https://graph.microsoft.us/");
        assert_eq!(gov.authority_host_str(), "https://login.microsoftonline.us");
        assert_eq!(
            gov.arm_scope,
            "https://management.usgovcloudapi.net/.default"
        );
        assert_eq!(gov.graph_scope, "https://graph.microsoft.us/.default");
    }

    #[test]
    fn china_maps_to_chinacloudapi_and_microsoftgraph_chinacloudapi() {
        let china = resolved(AzureCloud::AzureChinaCloud);
        assert_eq!(china.arm.as_str(), "https://management.chinacloudapi.cn/");
        assert_eq!(
            china.graph.as_str(),
            "https://microsoftgraph.chinacloudapi.cn/"
        );
        assert_eq!(china.authority_host_str(), "https://login.chinacloudapi.cn");
        assert_eq!(
            china.arm_scope,
            "https://management.chinacloudapi.cn/.default"
        );
        assert_eq!(
            china.graph_scope,
            "https://microsoftgraph.chinacloudapi.cn/.default"
        );
    }

    #[test]
    fn overrides_replace_endpoints_but_keep_the_clouds_token_scopes() {
        let overrides = EndpointOverrides {
            arm_endpoint: Some(Url::parse("https://127.0.0.1:8443/arm").unwrap()),
            graph_endpoint: Some(Url::parse("https://graph.local:8443").unwrap()),
            authority_host: Some(Url::parse("https://login.local:8443/").unwrap()),
            ..EndpointOverrides::default()
        };
        let endpoints = CloudEndpoints::resolve(AzureCloud::AzureChinaCloud, &overrides).unwrap();
        assert_eq!(endpoints.arm.as_str(), "https://127.0.0.1:8443/arm/");
        assert_eq!(endpoints.graph.as_str(), "https://graph.local:8443/");
        assert_eq!(endpoints.authority_host_str(), "https://login.local:8443");
        assert_eq!(
            endpoints.arm_scope,
            "https://management.chinacloudapi.cn/.default"
        );
    }

    #[test]
    fn plain_http_endpoints_are_refused_because_tokens_would_travel_in_clear() {
        let overrides = EndpointOverrides {
            arm_endpoint: Some(Url::parse("http://127.0.0.1:8080/").unwrap()),
            ..EndpointOverrides::default()
        };
        let err = CloudEndpoints::resolve(AzureCloud::AzurePublicCloud, &overrides).unwrap_err();
        assert!(
            matches!(
                err,
                CloudError::NotHttps {
                    what: "ARM endpoint",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn cloud_names_parse_as_az_spells_them() {
        use clap::ValueEnum;
        for cloud in [
            AzureCloud::AzurePublicCloud,
            AzureCloud::AzureUSGovernment,
            AzureCloud::AzureChinaCloud,
        ] {
            assert_eq!(AzureCloud::from_str(cloud.as_str(), false).unwrap(), cloud);
        }
    }
}
