//! `herald docs`: the event catalog and the AsyncAPI document, from the demo system or from a
//! catalog a service exported (`GET /api/catalog`, `herald docs --format json`).

use std::path::{Path, PathBuf};

use herald::catalog::Catalog;
use herald::Config;

use crate::CliResult;

/// Where `herald docs` writes when not told otherwise.
const DEFAULT_OUT: &str = "docs/generated";

/// Generate the event catalog (HTML, JSON, Markdown) and an AsyncAPI 3.0 document.
#[derive(clap::Args)]
pub struct Args {
    /// Directory to write into [default: docs/generated, unless one --format is printed]
    #[arg(long)]
    out: Option<PathBuf>,
    /// What to generate; one format without --out is printed to stdout [default: all]
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Render a catalog JSON a service exported (GET /api/catalog) instead of the demo's; `-` reads stdin
    #[arg(long, value_name = "CATALOG_JSON")]
    from: Option<PathBuf>,
}

/// An output of `herald docs`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// AsyncAPI 3.0.0 (asyncapi.json)
    Asyncapi,
    /// One self-contained HTML page (catalog.html)
    Html,
    /// The catalog JSON the dashboard reads (catalog.json)
    Json,
    /// Markdown (catalog.md)
    Markdown,
    /// All four files
    All,
}

impl Format {
    const EACH: [Format; 4] = [
        Format::Asyncapi,
        Format::Html,
        Format::Json,
        Format::Markdown,
    ];

    fn file_name(self) -> &'static str {
        match self {
            Format::Asyncapi => "asyncapi.json",
            Format::Html => "catalog.html",
            Format::Json => "catalog.json",
            Format::Markdown | Format::All => "catalog.md",
        }
    }

    fn render(self, catalog: &Catalog) -> CliResult<String> {
        Ok(match self {
            Format::Asyncapi => serde_json::to_string_pretty(&catalog.to_asyncapi())? + "\n",
            // The struct, not `to_json()`, keeps the fields in the contract's order.
            Format::Json => serde_json::to_string_pretty(catalog)? + "\n",
            Format::Html => catalog.to_html(),
            Format::Markdown | Format::All => catalog.to_markdown(),
        })
    }
}

pub async fn run(config: Config, args: Args) -> CliResult<()> {
    let catalog = match &args.from {
        Some(path) => read_catalog(path)?.broker(&config.broker)?,
        None => crate::demo::catalog(&config).await?,
    };
    let format = args.format.unwrap_or(Format::All);
    if format != Format::All && args.out.is_none() {
        print!("{}", format.render(&catalog)?);
        return Ok(());
    }
    let out = args.out.unwrap_or_else(|| PathBuf::from(DEFAULT_OUT));
    std::fs::create_dir_all(&out)
        .map_err(|e| format!("cannot create the output directory {}: {e}", out.display()))?;
    let formats: &[Format] = if format == Format::All {
        &Format::EACH
    } else {
        std::slice::from_ref(&format)
    };
    for f in formats {
        let path = out.join(f.file_name());
        std::fs::write(&path, f.render(&catalog)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn read_catalog(path: &Path) -> CliResult<Catalog> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("cannot read the catalog from stdin: {e}"))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the catalog {}: {e}", path.display()))?
    };
    Ok(Catalog::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}
