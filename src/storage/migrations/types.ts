// The shape of one migration: raw SQL through Sequelize, so every constraint has the name we give it.
import type { Sequelize } from 'sequelize';
import type { RunnableMigration } from 'umzug';

export type Migration = RunnableMigration<Sequelize>;
