#!/usr/bin/env node
import { Command } from 'commander';
import { ConfigError, loadConfig } from './config/load.js';
import { startServer } from './main.js';

const program = new Command();
program.name('registry-cache').description('Node-local pull-through OCI registry cache').showHelpAfterError();

program
  .command('serve', { isDefault: true })
  .description('run the cache server')
  .option('-c, --config <file>', 'YAML configuration file')
  .action(async (options: { config?: string }) => {
    let config;
    try {
      config = loadConfig(options.config === undefined ? {} : { file: options.config });
    } catch (err) {
      if (err instanceof ConfigError) {
        process.stderr.write(`registry-cache: ${err.message}\n`);
        process.exit(2);
      }
      throw err;
    }
    const server = await startServer(config);
    const shutdown = (signal: string): void => {
      server.services.log.info({ signal }, 'shutting down');
      server.close().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    };
    process.once('SIGTERM', () => shutdown('SIGTERM'));
    process.once('SIGINT', () => shutdown('SIGINT'));
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`registry-cache: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
