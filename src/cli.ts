#!/usr/bin/env node
import './thread-pool.js';
import './runtime-check.js';
import { Command } from 'commander';
import { ConfigError, loadConfig } from './config/load.js';
import { DEFAULT_CERTS_DIR, restoreHosts, writeHosts } from './hosts.js';
import type { Config } from './config/load.js';

// The server and the commands are imported by the command that runs: `records`, `verify` and `gc` never load the
// HTTP server, the upstream client or the metrics (0.6 of their 0.7 CPU s on an empty store was module loading).

/** Loads config or exits with the bad key named (exit 2). */
function configOrExit(file: string | undefined): Config {
  try {
    const onWarning = (message: string): void => void process.stderr.write(`registry-cache: warning: ${message}\n`);
    return loadConfig(file === undefined ? { onWarning } : { file, onWarning });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`registry-cache: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}

const program = new Command();
program.name('registry-cache').description('Node-local pull-through OCI registry cache').showHelpAfterError();

program
  .command('serve', { isDefault: true })
  .description('run the cache server')
  .option('-c, --config <file>', 'YAML configuration file')
  .action(async (options: { config?: string }) => {
    const config = configOrExit(options.config);
    const { startServer } = await import('./main.js');
    const server = await startServer(config);
    const shutdown = (signal: string): void => {
      server.services.log.info({ signal }, 'shutting down');
      // A ref'd timer keeps the process alive until close finishes (its own timers are unref'd), and bounds it.
      setTimeout(() => {
        server.services.log.error('shutdown did not finish in time; exiting');
        process.exit(1);
      }, config.shutdownTimeoutMs + 10_000);
      server.close().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    };
    process.once('SIGTERM', () => shutdown('SIGTERM'));
    process.once('SIGINT', () => shutdown('SIGINT'));
  });

program
  .command('preload')
  .description('import an image (OCI layout dir, OCI archive or docker save tar) into the store as pre-pulled')
  .argument('<source>', 'oci-layout directory, oci-archive .tar or docker-save .tar')
  .option('--name <ref>', 'image name to tag it with, e.g. registry.k8s.io/pause:3.10')
  .option('-c, --config <file>', 'YAML configuration file')
  .action(async (source: string, options: { name?: string; config?: string }) => {
    const { runPreload } = await import('./commands.js');
    await runPreload(configOrExit(options.config), source, options.name);
  });

program
  .command('records')
  .description('print the pull records (who pulled each image); never prints a secret')
  .option('--image <ref>', 'only this image (registry/repository[@digest])')
  .option('--json', 'JSON output')
  .option('-c, --config <file>', 'YAML configuration file')
  .action(async (options: { image?: string; json?: boolean; config?: string }) => {
    const { runRecords } = await import('./commands.js');
    await runRecords(configOrExit(options.config), options.image, options.json === true);
  });

program
  .command('hosts')
  .description('write containerd hosts.toml files that make every configured registry pull through this cache')
  .option('--certs-dir <dir>', 'containerd hosts directory', DEFAULT_CERTS_DIR)
  .option('--mirror <url>', 'URL containerd reaches the cache at (default: from listen)')
  .option('--restore', 'put back the original files and remove the ones registry-cache wrote')
  .option('-c, --config <file>', 'YAML configuration file')
  .action(async (options: { certsDir: string; mirror?: string; restore?: boolean; config?: string }) => {
    const config = configOrExit(options.config);
    const changes = options.restore ? await restoreHosts(config, options.certsDir) : await writeHosts(config, options.certsDir, options.mirror);
    for (const c of changes) process.stdout.write(`${c.action.padEnd(28)} ${c.file}\n`);
  });

program
  .command('gc')
  .description('evict least recently used images down to the low threshold now')
  .option('--dry-run', 'only print what would be evicted')
  .option('-c, --config <file>', 'YAML configuration file')
  .action(async (options: { dryRun?: boolean; config?: string }) => {
    const { runGc } = await import('./commands.js');
    await runGc(configOrExit(options.config), options.dryRun === true);
  });

program
  .command('verify')
  .description('re-hash every stored blob and manifest; --repair removes bad ones (and their records) so they are refetched')
  .option('--repair', 'remove what fails verification')
  .option('-c, --config <file>', 'YAML configuration file')
  .action(async (options: { repair?: boolean; config?: string }) => {
    const { runVerify } = await import('./commands.js');
    const clean = await runVerify(configOrExit(options.config), options.repair === true);
    process.exitCode = clean ? 0 : 1;
  });

program
  .command('check')
  .description("connect to each configured registry's /v2/ through its TLS, client certificate and proxy settings; one line per endpoint")
  .option('-c, --config <file>', 'YAML configuration file')
  .action(async (options: { config?: string }) => {
    const { runCheck } = await import('./commands.js');
    const ok = await runCheck(configOrExit(options.config));
    process.exitCode = ok ? 0 : 1;
  });

program
  .command('status')
  .description("what the cache is doing: a running server's /status.json (hit ratio, pulls, store, images), else what the store tells")
  .option('--json', 'JSON output')
  .option('--url <url>', 'operations listener to ask (default: from metricsListen)')
  .option('-c, --config <file>', 'YAML configuration file')
  .action(async (options: { json?: boolean; url?: string; config?: string }) => {
    const { runStatus } = await import('./commands.js');
    await runStatus(configOrExit(options.config), { json: options.json === true, url: options.url });
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`registry-cache: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
