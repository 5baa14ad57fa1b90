//! A formula in the shape of real public Salt formulas (a `map.jinja` importing `defaults.yaml`,
//! `grains.filter_by` over `os_family` merged with pillar, in-place dict updates, `- defaults:`
//! with keys one level short, YAML 1.1 scalars), rendered into a plan: the whole template layer
//! of issue 11 in one fixture.

use std::sync::Arc;

use serde_json::json;

use crate::{StateTree, TemplateContext};
use corpus_pillar::MemoryTree;

const DEFAULTS_YAML: &str = "\
nginx:
  pkg: nginx
  service: nginx
  enabled: yes
  config_mode: 0644
  vhosts: []
";

const OSMAP_YAML: &str = "\
Debian:
  user: www-data
  conf_dir: /etc/nginx
RedHat:
  user: nginx
  conf_dir: /etc/nginx
";

const MAP_JINJA: &str = "\
{%- import_yaml tpldir ~ '/defaults.yaml' as defaults %}
{%- import_yaml 'nginx/osmap.yaml' as osmap %}
{%- set os = salt['grains.filter_by'](osmap, grain='os_family', merge=salt['pillar.get']('nginx:lookup', {})) %}
{%- do defaults.nginx.update(os) %}
{%- set nginx = salt['pillar.get']('nginx', default=defaults.nginx, merge=True) %}
{%- do nginx.setdefault('extra', []).append(grains['osfinger']) %}
";

const INIT_SLS: &str = "\
{%- from tpldir ~ '/map.jinja' import nginx with context %}
{%- set conf = salt['file.join'](nginx.conf_dir, 'nginx.conf') %}
nginx-pkg:
  cmd.run:
    - name: apt-get install -y {{ nginx.pkg }}

{{ conf }}:
  file.managed:
    - source: salt://{{ slspath }}/files/nginx.conf.j2
    - template: jinja
    - mode: {{ nginx.config_mode }}
    - require:
      - cmd: nginx-pkg
    - defaults:
      user: {{ nginx.user }}
      vhosts: {{ nginx.vhosts | yaml }}
      label: '{{ '%s-%s' % (sls, slsdotpath) }}'

{%- for vhost in nginx.vhosts %}
{%- if loop.index > 2 %}{% break %}{% endif %}
/etc/nginx/sites-enabled/{{ vhost }}:
  file.symlink:
    - target: /etc/nginx/sites-available/{{ vhost }}
{%- endfor %}

nginx-service:
  service.running:
    - name: {{ nginx.service }}
    - enable: {{ nginx.enabled }}
    - watch:
      - file: {{ conf }}
";

#[test]
fn a_formula_with_map_jinja_renders_as_salt_renders_it() {
    let tree = MemoryTree::new()
        .with("nginx/defaults.yaml", DEFAULTS_YAML)
        .with("nginx/osmap.yaml", OSMAP_YAML)
        .with("nginx/map.jinja", MAP_JINJA)
        .with("nginx/init.sls", INIT_SLS);
    let ctx = TemplateContext::new(
        json!({"nginx": {"lookup": {"user": "web"}, "vhosts": ["a", "b", "c"]}}),
        json!({"id": "web1", "os": "Debian", "os_family": "Debian", "osfinger": "Debian-12"}),
        json!({}),
        json!("base"),
    );
    let rendered = StateTree::new(Arc::new(tree)).render_sls(&["nginx"], &ctx);
    let plan = match rendered {
        Ok(rendered) => rendered.plan,
        Err(err) => panic!("the formula must render: {err}"),
    };
    let chunks: Vec<_> = plan
        .chunks
        .iter()
        .map(|c| {
            (
                format!("{}.{} {}", c.module, c.function, c.name),
                json!(c.args),
            )
        })
        .collect();
    assert_eq!(
        chunks,
        vec![
            ("cmd.run apt-get install -y nginx".to_string(), json!({})),
            (
                "file.managed /etc/nginx/nginx.conf".to_string(),
                json!({
                    "source": "salt://nginx/files/nginx.conf.j2",
                    "template": "jinja",
                    "mode": 644,
                    "defaults": {"user": "web", "vhosts": ["a", "b", "c"], "label": "nginx-nginx"},
                }),
            ),
            (
                "file.symlink /etc/nginx/sites-enabled/a".to_string(),
                json!({"target": "/etc/nginx/sites-available/a"}),
            ),
            (
                "file.symlink /etc/nginx/sites-enabled/b".to_string(),
                json!({"target": "/etc/nginx/sites-available/b"}),
            ),
            ("service.running nginx".to_string(), json!({"enable": true})),
        ]
    );
}
